//! `[acme]` and the sites' `acme = true`: where certificates come from, checked like the rest.
//! The checks that need the certificate files (a host a hand-made certificate already covers) are
//! in `config::check`, which reads them.

use std::time::Duration;

use super::super::raw::{RawAcme, RawSite, S};
use super::{Ctx, Problem};
use crate::config::{AcmeConfig, ChallengeKind, HostPattern, ProxyConfig, LETS_ENCRYPT};

/// What ACME needs from a site with `acme = true`: the https listener and a certs folder, and
/// exact host names (a wildcard certificate needs DNS-01, which switchyard does not do).
pub(super) fn site(cx: &mut Ctx, rs: &RawSite, flag: &S<bool>, proxy: &ProxyConfig) {
    if !*flag.get_ref() {
        return;
    }
    let name = rs.name.get_ref();
    if proxy.https.is_none() || proxy.certs.is_none() {
        cx.err(flag, format!("site `{name}` has `acme = true` but [proxy] has no `https` listener and `certs` folder; ACME certificates are served on https: set both"));
    }
    for h in &rs.hosts {
        if let Ok(HostPattern::Wildcard(_)) = HostPattern::parse(h.get_ref()) {
            cx.err(h, format!("site `{name}`: `{}` is a wildcard, and a CA issues wildcard certificates only by DNS-01, which switchyard does not do; list the exact names under `hosts`, or serve the wildcard with a hand-made certificate in `certs` from a site without `acme`", h.get_ref()));
        }
    }
}

/// `[acme]` (None when absent); `used`: some site has `acme = true`.
pub(super) fn acme(
    cx: &mut Ctx,
    ra: Option<&S<RawAcme>>,
    proxy: &ProxyConfig,
    used: bool,
) -> Option<AcmeConfig> {
    if ra.is_none() && !used {
        return None;
    }
    let empty = RawAcme {
        directory: None,
        contact: Vec::new(),
        account_key: None,
        challenge: None,
        storage: None,
        renew_before: None,
        ca_certs: None,
    };
    let a = ra.map(|r| r.get_ref()).unwrap_or(&empty);
    let directory = match &a.directory {
        None => LETS_ENCRYPT.to_string(),
        Some(d) => {
            let url = d.get_ref().trim().to_string();
            let ok = url
                .parse::<http::Uri>()
                .ok()
                .is_some_and(|u| u.scheme_str() == Some("https") && u.host().is_some());
            if !ok {
                cx.err(d, format!("[acme] directory `{url}` is not an https:// URL; use the CA's directory URL, e.g. \"{LETS_ENCRYPT}\""));
            }
            url
        }
    };
    let mut contact = Vec::new();
    for c in &a.contact {
        let v = c.get_ref().trim();
        if v.strip_prefix("mailto:").is_some_and(|m| m.contains('@')) {
            contact.push(v.to_string());
        } else {
            cx.err(
                c,
                format!(
                    "[acme] contact `{v}` must be a mailto: URL, e.g. \"mailto:admin@example.org\""
                ),
            );
        }
    }
    let storage = match (&a.storage, &proxy.certs) {
        (Some(s), _) => cx.path(s.get_ref()),
        (None, Some(certs)) => certs.join("acme"),
        (None, None) => std::path::PathBuf::from("acme"),
    };
    if let (Some(s), Some(certs)) = (&a.storage, &proxy.certs) {
        if same_dir(&storage, certs) {
            cx.err(s, "[acme] storage must not be the certs folder itself (ACME files there would be read as hand-made pairs); use a folder of its own, e.g. the default <certs>/acme");
        }
    }
    let account_key = match &a.account_key {
        Some(k) => cx.path(k.get_ref()),
        None => storage.join("account.key"),
    };
    let challenge = match &a.challenge {
        None => ChallengeKind::TlsAlpn01,
        Some(c) => match c.get_ref().as_str() {
            "tls-alpn-01" => ChallengeKind::TlsAlpn01,
            "http-01" => ChallengeKind::Http01,
            other => {
                cx.err(c, format!("[acme] challenge `{other}` is not known; use \"tls-alpn-01\" (on the https listener) or \"http-01\" (on the http listener)"));
                ChallengeKind::TlsAlpn01
            }
        },
    };
    if challenge == ChallengeKind::Http01 && proxy.http.is_none() {
        let line = a
            .challenge
            .as_ref()
            .map(|c| cx.line(c.span().start))
            .or_else(|| ra.map(|r| cx.line(r.span().start)))
            .unwrap_or(1);
        cx.problems.push(Problem {
            file: cx.file.clone(),
            line,
            message: "[acme] challenge = \"http-01\" needs the plain listener: set [proxy] http (the CA connects to port 80), or use challenge = \"tls-alpn-01\"".into(),
        });
    }
    let renew_before = cx.duration(
        &a.renew_before,
        "renew_before",
        Duration::from_secs(30 * 86400),
    );
    let ca_certs = a.ca_certs.as_ref().map(|c| {
        let p = cx.path(c.get_ref());
        if !p.is_file() {
            cx.err(
                c,
                format!(
                    "[acme] ca_certs {} does not exist; point it at a PEM file of the CA that signs the directory's HTTPS certificate, or leave it out to trust the usual public roots",
                    p.display()
                ),
            );
        }
        p
    });
    Some(AcmeConfig {
        directory,
        contact,
        account_key,
        challenge,
        storage,
        renew_before,
        ca_certs,
    })
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse_config, ChallengeKind, LETS_ENCRYPT};

    fn parse(
        proxy_extra: &str,
        acme: &str,
        site_extra: &str,
    ) -> Result<crate::config::Config, Vec<String>> {
        let d = std::env::temp_dir();
        let text = format!(
            "[proxy]\nhttps = \"127.0.0.1:0\"\ncerts = \"{}\"\nstate = \"s.json\"\n{proxy_extra}\n{acme}\n[[site]]\nname = \"a\"\nhosts = [\"a.test\"{site_extra}]\nacme = true\n[site.pools]\nblue = [\"127.0.0.1:1\"]\n",
            d.display()
        );
        parse_config(Path::new("t.toml"), &text).map_err(|e| e.problems())
    }

    #[test]
    fn defaults_without_an_acme_section() {
        let c = parse("", "", "").unwrap();
        let a = c.acme.unwrap();
        assert_eq!(a.directory, LETS_ENCRYPT);
        assert_eq!(a.challenge, ChallengeKind::TlsAlpn01);
        assert_eq!(a.storage, std::env::temp_dir().join("acme"));
        assert_eq!(a.account_key, a.storage.join("account.key"));
        assert_eq!(a.renew_before.as_secs(), 30 * 86400);
        assert!(c.sites[0].acme);
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let p = parse(
            "",
            "[acme]\ndirectory = \"http://ca.test/dir\"\ncontact = [\"ops@x.test\"]\nchallenge = \"dns-01\"\nrenew_before = \"soon\"",
            ", \"*.a.test\"",
        )
        .unwrap_err();
        let has =
            |line: &str, what: &str| p.iter().any(|m| m.starts_with(line) && m.contains(what));
        assert!(has("t.toml:7:", "not an https:// URL"), "{p:?}");
        assert!(has("t.toml:8:", "mailto:"), "{p:?}");
        assert!(has("t.toml:9:", "tls-alpn-01"), "{p:?}");
        assert!(has("t.toml:10:", "renew_before"), "{p:?}");
        assert!(has("t.toml:13:", "wildcard"), "{p:?}");
    }

    #[test]
    fn http_01_needs_the_plain_listener_and_storage_its_own_folder() {
        let p = parse("", "[acme]\nchallenge = \"http-01\"", "").unwrap_err();
        assert!(
            p.iter().any(|m| m.contains("needs the plain listener")),
            "{p:?}"
        );
        assert!(parse(
            "http = \"127.0.0.1:0\"",
            "[acme]\nchallenge = \"http-01\"",
            ""
        )
        .is_ok());
        let same = format!("[acme]\nstorage = \"{}\"", std::env::temp_dir().display());
        let p = parse("", &same, "").unwrap_err();
        assert!(
            p.iter().any(|m| m.contains("must not be the certs folder")),
            "{p:?}"
        );
    }

    #[test]
    fn acme_needs_https() {
        let text = "[proxy]\nhttp = \"127.0.0.1:0\"\nstate = \"s.json\"\n[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\nacme = true\n[site.pools]\nblue = [\"127.0.0.1:1\"]\n";
        let p = parse_config(Path::new("t.toml"), text)
            .unwrap_err()
            .problems();
        assert!(
            p.iter()
                .any(|m| m.starts_with("t.toml:7:") && m.contains("https")),
            "{p:?}"
        );
    }
}
