//! Property tests (issue 7): any config text and any control body yields an error or a result,
//! never a panic or a crash.

use std::path::Path;

use proptest::prelude::*;

use crate::support::*;

const VALID: &str = r#"[proxy]
http = "127.0.0.1:0"
state = "s.json"
max_body_bytes = "1MiB"
[[site]]
name = "wiki"
hosts = ["wiki.test", "*.wiki.test"]
active = "green"
[site.pools]
blue = ["127.0.0.1:1"]
green = ["[::1]:2"]
[site.health]
path = "/health"
interval = "2s"
[site.read_only]
allow_clients = ["10.0.0.0/8"]
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Arbitrary text: parse returns Ok or problems with a line number.
    #[test]
    fn config_parser_never_panics(text in "\\PC{0,400}") {
        if let Err(e) = switchyard::config::parse_config(Path::new("f.toml"), &text) {
            for p in e.problems() {
                prop_assert!(p.starts_with("f.toml:"), "{}", p);
            }
        }
    }

    /// A valid config with one byte range replaced by arbitrary text.
    #[test]
    fn mutated_valid_config_never_panics(at in 0usize..VALID.len(), len in 0usize..20, junk in "\\PC{0,20}") {
        let mut t = VALID.to_string();
        let at = (0..=at).rev().find(|i| t.is_char_boundary(*i)).unwrap_or(0);
        let end = (at + len).min(t.len());
        let end = (end..=t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(t.len());
        t.replace_range(at..end, &junk);
        let _ = switchyard::config::parse_config(Path::new("f.toml"), &t);
    }
}

/// Random bodies on every control endpoint: always a JSON answer, the daemon survives, and only
/// well-formed requests change anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bodies_fuzz() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let p = Proxy::start(
        "",
        &site("wiki", &["127.0.0.1"], &[blue.addr], &[green.addr], ""),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let endpoints = [
        ("POST", "/v1/sites/wiki/switch"),
        ("PUT", "/v1/read-only"),
        ("PUT", "/v1/sites/wiki/pools/green"),
        ("POST", "/v1/reload"),
    ];
    let strategy = || {
        (
            0usize..4,
            prop_oneof![
                "\\PC{0,200}",
                // JSON-ish shapes, more likely to reach the deserializer's corners
                proptest::collection::vec(
                    prop_oneof![
                        Just("{"),
                        Just("}"),
                        Just("\"to\":"),
                        Just("\"green\""),
                        Just("\"on\":"),
                        Just("true"),
                        Just(","),
                        Just("\"backends\":"),
                        Just("["),
                        Just("]"),
                        Just("1e999"),
                        Just("-1"),
                        Just("null"),
                        Just("\"\\u0000\"")
                    ],
                    0..12
                )
                .prop_map(|v| v.concat()),
            ],
        )
    };
    let rt = tokio::runtime::Handle::current();
    let ctl = p.control.clone();
    let result = tokio::task::spawn_blocking(move || {
        runner.run(&strategy(), |(i, body)| {
            let (m, uri) = endpoints[i];
            let (status, v) = rt.block_on(control(&ctl, m, uri, Some(&body), None));
            prop_assert!(
                status == 200 || (400..500).contains(&status) || status == 504,
                "{} {} {:?} -> {}",
                m,
                uri,
                body,
                status
            );
            if status != 200 {
                prop_assert!(v["error"].is_string(), "{:?} -> {}", body, v);
            }
            Ok(())
        })
    })
    .await
    .unwrap();
    result.unwrap();
    assert!(!p.stderr_text().contains("panicked"));
    let st = p.status();
    assert!(st["sites"][0]["active"].is_string());
}
