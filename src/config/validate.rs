//! raw -> checked. Gathers every problem (file:line + what to do) instead of stopping at the first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::raw::{RawConfig, RawHealth, RawSite, S};
use super::units::{parse_duration, parse_size};
use super::*;

mod acme;
mod backups;
mod cluster;
mod proxy;
mod release;
mod swarm;

struct Ctx<'a> {
    file: String,
    text: &'a str,
    base: PathBuf,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err<T>(&mut self, span: &S<T>, message: impl Into<String>) {
        let line = self.line(span.span().start);
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            message: message.into(),
        });
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn addr(&mut self, v: &S<String>, what: &str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    v,
                    format!(
                        "{what} `{}` is not an address; write IP:PORT, e.g. \"127.0.0.1:8081\" or \"[::1]:8081\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, v: &Option<S<String>>, key: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(s, format!("`{key}` must be more than zero"));
                    default
                }
                Err(e) => {
                    self.err(s, format!("`{key}`: {e}"));
                    default
                }
            },
        }
    }

    fn count(&mut self, v: &Option<S<i64>>, key: &str, min: i64, max: i64, default: i64) -> i64 {
        match v {
            None => default,
            Some(n) if (min..=max).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                self.err(
                    n,
                    format!(
                        "`{key}` must be between {min} and {max}, not {}",
                        n.get_ref()
                    ),
                );
                default
            }
        }
    }
}

/// Parses and validates config text; `path` is used for messages and to resolve relative paths.
pub fn parse_config(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut cx = Ctx {
        file: path.display().to_string(),
        text,
        base: path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf(),
        problems: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let line = e.span().map(|s| cx.line(s.start)).unwrap_or(1);
            let msg = e.message().to_string();
            let hint = if msg.contains("unknown field") {
                " (check the spelling against DESIGN.md's config section; unknown keys are refused so a typo never goes unnoticed)"
            } else if msg.contains("missing field") {
                " (add it)"
            } else {
                ""
            };
            return Err(ConfigError::Invalid(vec![Problem {
                file: cx.file,
                line,
                message: format!("{msg}{hint}"),
            }]));
        }
    };
    let proxy = proxy::proxy(&mut cx, &raw.proxy);
    let cluster = raw
        .cluster
        .as_ref()
        .map(|c| cluster::cluster(&mut cx, c, &proxy));
    let mut sites = Vec::new();
    let mut seen_hosts: HashMap<String, (String, usize)> = HashMap::new();
    let mut seen_names: HashMap<String, usize> = HashMap::new();
    if raw.site.is_empty() {
        cx.err(
            &raw.proxy,
            "no [[site]] is defined; add at least one with a name, hosts and pools",
        );
    }
    for rs in &raw.site {
        let line = cx.line(rs.span().start);
        let name = rs.get_ref().name.get_ref().clone();
        if let Some(prev) = seen_names.insert(name.clone(), line) {
            cx.err(&rs.get_ref().name, format!("site `{name}` is defined twice (first at line {prev}); site names must be unique"));
        }
        if let Some(flag) = &rs.get_ref().acme {
            acme::site(&mut cx, rs.get_ref(), flag, &proxy);
        }
        if let Some(site) = site(&mut cx, rs.get_ref(), proxy.https.is_some()) {
            // Parse each raw entry again rather than zipping with `site.hosts`: a host that failed
            // to parse is missing there, which would shift every later span by one line.
            for span in rs
                .get_ref()
                .hosts
                .iter()
                .chain(rs.get_ref().preview_hosts.iter())
            {
                let Ok(h) = HostPattern::parse(span.get_ref()) else {
                    continue;
                };
                let key = h.to_string();
                if let Some((other, l)) = seen_hosts.get(&key) {
                    let msg = format!("host `{key}` is already used by site `{other}` (line {l}); a host can route to one site only");
                    cx.err(span, msg);
                } else {
                    let l = cx.line(span.span().start);
                    seen_hosts.insert(key, (site.name.clone(), l));
                }
            }
            sites.push(site);
        }
    }
    let acme = acme::acme(
        &mut cx,
        raw.acme.as_ref(),
        &proxy,
        sites.iter().any(|s| s.acme),
    );
    let offsite = raw
        .backups
        .as_ref()
        .and_then(|b| b.offsite.as_ref())
        .map(|o| backups::offsite(&mut cx, o));
    if cx.problems.is_empty() {
        Ok(Config {
            path: path.to_path_buf(),
            proxy,
            sites,
            acme,
            cluster,
            offsite,
        })
    } else {
        cx.problems.sort_by_key(|p| p.line);
        Err(ConfigError::Invalid(cx.problems))
    }
}

/// `allow_paths` (each starting with `/`) and `allow_clients` (addresses or networks).
fn allow_policy(cx: &mut Ctx, paths: &[S<String>], clients: &[S<String>]) -> ReadOnlyPolicy {
    let allow_clients = networks(cx, clients, "allow_clients");
    let mut allow_paths = Vec::new();
    for p in paths {
        if !p.get_ref().starts_with('/') {
            cx.err(
                p,
                format!("allow_paths entry `{}` must start with /", p.get_ref()),
            );
        }
        allow_paths.push(p.get_ref().clone());
    }
    ReadOnlyPolicy {
        allow_paths,
        allow_clients,
    }
}

/// A list of addresses or CIDR networks ("10.0.0.0/8", "192.0.2.1", "::1").
fn networks(cx: &mut Ctx, list: &[S<String>], key: &str) -> Vec<IpNet> {
    let mut out = Vec::new();
    for c in list {
        let s = c.get_ref();
        let parsed = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => out.push(n),
            Err(_) => cx.err(
                c,
                format!(
                    "{key} entry `{s}` is not an address or a CIDR network like \"10.0.0.0/8\""
                ),
            ),
        }
    }
    out
}

fn hosts(cx: &mut Ctx, list: &[S<String>]) -> Vec<HostPattern> {
    let mut out = Vec::new();
    for h in list {
        match HostPattern::parse(h.get_ref()) {
            Ok(p) => out.push(p),
            Err(e) => cx.err(h, format!("bad host: {e}")),
        }
    }
    out
}

fn site(cx: &mut Ctx, rs: &RawSite, https: bool) -> Option<SiteConfig> {
    let name = rs.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        cx.err(&rs.name, format!("site name `{name}` must be letters, digits, - or _ (it is used in URLs and file names)"));
    }
    if rs.hosts.is_empty() {
        cx.err(
            &rs.name,
            format!("site `{name}` has no `hosts`; add e.g. hosts = [\"wiki.example.org\"]"),
        );
    }
    let hosts = hosts(cx, &rs.hosts);
    let preview_hosts = hosts_checked(cx, &rs.preview_hosts);
    let active = match &rs.active {
        None => Color::Blue,
        Some(a) => match Color::parse(a.get_ref()) {
            Some(c) => c,
            None => {
                cx.err(
                    a,
                    format!(
                        "`active` must be \"blue\" or \"green\", not `{}`",
                        a.get_ref()
                    ),
                );
                Color::Blue
            }
        },
    };
    let mut pools: [Vec<SocketAddr>; 2] = [Vec::new(), Vec::new()];
    if let Some(p) = &rs.pools {
        for (color, list) in [
            (Color::Blue, &p.get_ref().blue),
            (Color::Green, &p.get_ref().green),
        ] {
            for a in list {
                if let Some(addr) = cx.addr(a, "backend") {
                    pools[color.idx()].push(addr);
                }
            }
        }
    }
    if rs.pools.is_none() && rs.release.is_none() {
        cx.err(&rs.name, format!("site `{name}` has neither [site.pools] nor [site.release]; give it backends, e.g. [site.pools] blue = [\"127.0.0.1:8081\"]"));
    } else if rs.release.is_none() && pools[active.idx()].is_empty() {
        let span_line = rs
            .pools
            .as_ref()
            .map(|p| p.span().start)
            .unwrap_or(rs.name.span().start);
        let line = cx.line(span_line);
        cx.problems.push(Problem {
            file: cx.file.clone(),
            line,
            message: format!("site `{name}`: the active color `{active}` has no backends; list at least one address in [site.pools] {active}"),
        });
    }
    let health = rs.health.as_ref().map(|h| health(cx, h.get_ref()));
    let read_only = match &rs.read_only {
        None => ReadOnlyPolicy::default(),
        Some(r) => {
            let r = r.get_ref();
            allow_policy(cx, &r.allow_paths, &r.allow_clients)
        }
    };
    let maintenance = match &rs.maintenance {
        None => MaintenancePolicy::default(),
        Some(m) => {
            let m = m.get_ref();
            let page = m.page.as_ref().and_then(|p| {
                let path = cx.path(p.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(html) => Some(std::sync::Arc::<str>::from(html)),
                    Err(e) => {
                        cx.err(p, format!("site `{name}`: cannot read the maintenance page {}: {e}; fix the path (relative to this file) or leave `page` out for the built-in page", path.display()));
                        None
                    }
                }
            });
            MaintenancePolicy {
                allow: allow_policy(cx, &m.allow_paths, &m.allow_clients),
                page,
            }
        }
    };
    let release = rs.release.as_ref().map(|r| release::release(cx, r, &name));
    let colors_hold_data = match &rs.colors_hold_data {
        Some(v) if !*v.get_ref() && release.is_some() => {
            cx.err(v, format!("site `{name}` has [site.release], so each color has its own volumes and data; remove `colors_hold_data = false`"));
            true
        }
        Some(v) => *v.get_ref(),
        None => release.is_some(),
    };
    let hsts = rs.hsts.as_ref().and_then(|v| {
        let text = v.get_ref().trim();
        let ok = text
            .split(';')
            .next()
            .and_then(|d| d.trim().strip_prefix("max-age="))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            && http::HeaderValue::from_str(text).is_ok();
        if !ok {
            cx.err(v, format!("site `{name}`: hsts `{text}` must start with max-age=SECONDS, e.g. \"max-age=31536000; includeSubDomains\""));
        }
        ok.then(|| text.to_string())
    });
    let mut json_errors = Vec::new();
    for p in &rs.json_errors {
        if p.get_ref().starts_with('/') {
            json_errors.push(p.get_ref().clone());
        } else {
            cx.err(p, format!("site `{name}`: json_errors entry `{}` must be a path prefix starting with /, e.g. \"/api.php\"", p.get_ref()));
        }
    }
    Some(SiteConfig {
        name,
        hosts,
        active,
        redirect_http: rs.redirect_http.unwrap_or(https),
        hsts,
        json_errors,
        preview_hosts,
        pools,
        health,
        read_only,
        maintenance,
        release,
        colors_hold_data,
        acme: rs.acme.as_ref().is_some_and(|a| *a.get_ref()),
    })
}

fn hosts_checked(cx: &mut Ctx, list: &[S<String>]) -> Vec<HostPattern> {
    hosts(cx, list)
}

fn health(cx: &mut Ctx, h: &RawHealth) -> HealthConfig {
    let path = h
        .path
        .as_ref()
        .map(|p| p.get_ref().clone())
        .unwrap_or_else(|| "/".into());
    if let Some(p) = &h.path {
        if !p.get_ref().starts_with('/') {
            cx.err(p, "health `path` must start with /");
        }
    }
    let expect_status = h
        .expect_status
        .as_ref()
        .map(|_| cx.count(&h.expect_status, "expect_status", 100, 599, 200) as u16);
    HealthConfig {
        path,
        interval: cx.duration(&h.interval, "interval", Duration::from_secs(2)),
        timeout: cx.duration(&h.timeout, "timeout", Duration::from_secs(2)),
        rise: cx.count(&h.rise, "rise", 1, 100, 2) as u32,
        fall: cx.count(&h.fall, "fall", 1, 100, 3) as u32,
        expect_status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse_config(Path::new("t.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.problems(),
        }
    }

    const BASE: &str = "[proxy]\nhttp = \"127.0.0.1:0\"\nstate = \"s.json\"\n";

    #[test]
    fn minimal_ok() {
        let t = format!("{BASE}[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\n[site.pools]\nblue = [\"127.0.0.1:1\"]\n");
        assert!(problems(&t).is_empty(), "{:?}", problems(&t));
    }

    #[test]
    fn unknown_key_has_line() {
        let t = format!("{BASE}colour = 1\n");
        let p = problems(&t);
        assert!(p[0].starts_with("t.toml:4:"), "{p:?}");
        assert!(p[0].contains("colour"), "{p:?}");
    }

    #[test]
    fn gathers_every_problem() {
        let t = format!("{BASE}[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\n[site.pools]\nblue = [\"nope\"]\n[[site]]\nname = \"b\"\nhosts = [\"a.test\"]\n");
        let p = problems(&t);
        assert!(
            p.iter()
                .any(|m| m.contains("t.toml:8:") && m.contains("not an address")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("t.toml:11:") && m.contains("already used")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("neither")), "{p:?}");
    }

    #[test]
    fn colors_hold_data_defaults_to_having_a_release() {
        let site = |extra: &str| {
            format!("{BASE}[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\n{extra}\n[site.pools]\nblue = [\"127.0.0.1:1\"]\n")
        };
        let held = |text: &str| {
            parse_config(Path::new("t.toml"), text).map(|c| c.sites[0].colors_hold_data)
        };
        assert!(matches!(held(&site("")), Ok(false)));
        assert!(matches!(held(&site("colors_hold_data = true")), Ok(true)));
        let rel =
            "[site.release]\n[[site.release.services]]\nname = \"web\"\nimage = \"w:{version}\"\n";
        let with_release =
            format!("{BASE}[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\n{{}}\n{rel}");
        assert!(matches!(held(&with_release.replace("{}", "")), Ok(true)));
        let p = problems(&with_release.replace("{}", "colors_hold_data = false"));
        assert!(
            p.iter()
                .any(|m| m.contains("t.toml:7:") && m.contains("colors_hold_data")),
            "{p:?}"
        );
    }
}
