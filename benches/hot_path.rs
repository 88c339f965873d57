//! Micro-benchmarks of the request path's pieces: host lookup in the routing table, header
//! rewriting, the read-only decision, access-log formatting. Run: `cargo bench --bench hot_path`.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};

use switchyard::config::parse_config;
use switchyard::proxy::{gate, headers};
use switchyard::routing::RoutingTable;
use switchyard::state::State;

fn table(sites: usize) -> RoutingTable {
    let mut t = String::from("[proxy]\nhttp = \"127.0.0.1:0\"\nstate = \"s.json\"\n");
    for i in 0..sites {
        t += &format!("[[site]]\nname = \"s{i}\"\nhosts = [\"s{i}.example.org\", \"*.s{i}.example.org\"]\n[site.pools]\nblue = [\"127.0.0.1:{}\"]\n", 1000 + i);
    }
    let cfg = parse_config(Path::new("b.toml"), &t).expect("valid bench config");
    RoutingTable::build(&cfg, &State::default(), &mut HashMap::new(), None)
}

fn lookup(c: &mut Criterion) {
    let t = table(100);
    c.bench_function("lookup exact (100 sites)", |b| {
        b.iter(|| black_box(t.lookup(black_box("s42.example.org"))))
    });
    c.bench_function("lookup exact with port + uppercase", |b| {
        b.iter(|| black_box(t.lookup(black_box("S42.Example.org:443"))))
    });
    c.bench_function("lookup wildcard (100 sites)", |b| {
        b.iter(|| black_box(t.lookup(black_box("www.s42.example.org"))))
    });
    c.bench_function("lookup miss", |b| {
        b.iter(|| black_box(t.lookup(black_box("nope.example.net"))))
    });
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "wiki.example.org"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        ("cookie", "session=abcdef0123456789; theme=dark"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn rewrite(c: &mut Criterion) {
    let base = request_headers();
    let ip = headers::ip_value("192.0.2.7".parse().expect("ip"));
    let host = HeaderValue::from_static("wiki.example.org");
    c.bench_function("rewrite request headers", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                headers::strip_hop_by_hop(&mut h, false);
                headers::add_forwarded(&mut h, &ip, true, &host, false);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn read_only(c: &mut Criterion) {
    let t = table(1);
    let site = t.sites[0].clone();
    let ip = "127.0.0.1".parse().expect("ip");
    c.bench_function("read-only decision: GET", |b| {
        b.iter(|| {
            black_box(gate::check(
                &site,
                black_box(&Method::GET),
                "/wiki/Main_Page",
                ip,
            ))
        })
    });
    c.bench_function("read-only decision: POST (counts in-flight)", |b| {
        b.iter(|| {
            black_box(gate::check(
                &site,
                black_box(&Method::POST),
                "/index.php",
                ip,
            ))
        })
    });
}

fn access_log(c: &mut Criterion) {
    let record = || {
        Box::new(switchyard::accesslog::Record {
            start: Instant::now(),
            client: "192.0.2.7:51234".parse().expect("addr"),
            host: "wiki.example.org".into(),
            method: Method::GET,
            path: "/wiki/Main_Page?action=history".into(),
            status: 200,
            color: Some("green"),
            backend: Some("127.0.0.1:49153".parse().expect("addr")),
        })
    };
    // What the request path does: finish the record (on the log thread it is formatted).
    c.bench_function("access-log record finish (request path)", |b| {
        b.iter_batched(
            record,
            |r| black_box(r.finish(black_box(5123), true)),
            criterion::BatchSize::SmallInput,
        )
    });
    let line = record().finish(5123, true);
    let mut memo = switchyard::accesslog::Memo::default();
    let mut buf = Vec::with_capacity(64 * 1024);
    c.bench_function("access-log line format (log thread)", |b| {
        b.iter(|| {
            buf.clear();
            line.format_into(&mut buf, &mut memo);
            black_box(buf.len())
        })
    });
}

fn metrics(c: &mut Criterion) {
    let m = switchyard::metrics::Metrics::default();
    m.site("wiki");
    let took = std::time::Duration::from_micros(350);
    c.bench_function("metrics: one response (counter + histogram)", |b| {
        b.iter(|| {
            m.response(
                black_box(Some("wiki")),
                Some(switchyard::config::Color::Blue),
                black_box(200),
                took,
            )
        })
    });
}

criterion_group!(benches, lookup, rewrite, read_only, access_log, metrics);
criterion_main!(benches);
