//! The edge (issue 2): routing, TLS, forwarding, limits, timeouts, shutdown.


use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_over_h1_h2_and_tls() {
    let a = Backend::start("a-blue").await;
    let b = Backend::start("b-blue").await;
    let sites = site("a", &["a.test", "localhost"], &[a.addr], &[], "") + &site("b", &["b.test", "*.b.test"], &[b.addr], &[], "");
    let p = Proxy::start("", &sites);
    let c = client(&p, &["a.test", "b.test", "x.b.test", "nope.test"]);
    let r = c.get(p.surl("a.test", "/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "a-blue");
    assert_eq!(c.get(p.surl("x.b.test", "/")).send().await.unwrap().text().await.unwrap(), "b-blue");
    let r = c.get(p.surl("nope.test", "/")).send().await.unwrap();
    assert!(r.status() == 404 || r.status() == 421, "{}", r.status());
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let r = h1.get(p.url("/")).header("host", "b.test").send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.unwrap(), "b-blue");
}
