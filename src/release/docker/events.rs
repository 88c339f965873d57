//! What the engine tells about starts, and which host ports its running containers publish: the
//! two facts `envs sync` and `envs watch` work from.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bollard::container::ListContainersOptions;
use bollard::system::EventsOptions;
use futures_util::{Stream, StreamExt};

use super::names::LABEL_SITE;
use super::{docker_err, Engine};
use crate::release::ReleaseError;

/// Host ports published by the running containers of the engine (any site, any owner).
#[derive(Debug, Default)]
pub struct Published {
    by_port: HashMap<u16, Vec<(IpAddr, String)>>,
}

impl Published {
    pub fn add(&mut self, ip: IpAddr, port: u16, container: &str) {
        self.by_port
            .entry(port)
            .or_default()
            .push((ip, container.to_string()));
    }

    /// The container that answers on `addr`: one publishing its port on that IP or on every
    /// address (0.0.0.0, ::), for a loopback or unspecified `addr`.
    pub fn owner(&self, addr: SocketAddr) -> Option<&str> {
        let local = addr.ip().is_loopback() || addr.ip().is_unspecified();
        self.by_port.get(&addr.port())?.iter().find_map(|(ip, c)| {
            let any = *ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                || *ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
            (*ip == addr.ip() || (local && any)).then_some(c.as_str())
        })
    }
}

impl Engine {
    /// Every host port the running containers publish, with the container's name.
    pub async fn published(&self) -> Result<Published, ReleaseError> {
        let list = self
            .d
            .list_containers(Some(ListContainersOptions::<String> {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(docker_err("list running containers"))?;
        let mut out = Published::default();
        for c in list {
            let name = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            for p in c.ports.unwrap_or_default() {
                let ip = p.ip.as_deref().and_then(|i| i.parse::<IpAddr>().ok());
                if let (Some(ip), Some(public)) = (ip, p.public_port) {
                    out.add(ip, public, &name);
                }
            }
        }
        Ok(out)
    }

    /// The site label of every container of a switchyard environment that starts from now on
    /// (a `docker start`/`restart`, the restart policy after an engine restart). The stream ends
    /// or yields an error when the engine goes away; the caller reconnects.
    pub fn starts(&self) -> impl Stream<Item = Result<String, ReleaseError>> + '_ {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["start".to_string()]),
            ("label".to_string(), vec![LABEL_SITE.to_string()]),
        ]);
        self.d
            .events(Some(EventsOptions::<String> {
                filters,
                ..Default::default()
            }))
            .filter_map(|ev| async move {
                match ev {
                    Ok(m) => m
                        .actor
                        .and_then(|a| a.attributes)
                        .and_then(|mut at| at.remove(LABEL_SITE))
                        .map(Ok),
                    Err(source) => Some(Err(ReleaseError::Docker {
                        what: "follow its events".into(),
                        source,
                    })),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_matches_loopback_and_any() {
        let mut p = Published::default();
        p.add("127.0.0.1".parse().unwrap(), 32768, "a-blue-web");
        p.add("0.0.0.0".parse().unwrap(), 8080, "other");
        let at = |s: &str| p.owner(s.parse().unwrap());
        assert_eq!(at("127.0.0.1:32768"), Some("a-blue-web"));
        assert_eq!(at("127.0.0.1:8080"), Some("other"));
        assert_eq!(at("127.0.0.1:32769"), None);
        assert_eq!(at("10.0.0.5:32768"), None);
    }
}
