//! Which nodes may run a service: ready, active, and every placement constraint holds. The
//! attributes Docker documents for `--constraint` that a node's record carries are checked here;
//! one this code does not know is left to the swarm (counted as allowed).

use bollard::models::Node;

/// Ids of the ready, active nodes that satisfy every constraint.
pub fn eligible(nodes: &[Node], constraints: &[String]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| ready(n) && constraints.iter().all(|c| holds(n, c)))
        .filter_map(|n| n.id.clone())
        .collect()
}

fn ready(n: &Node) -> bool {
    let state = n
        .status
        .as_ref()
        .and_then(|s| s.state)
        .map(|s| s.to_string());
    let avail = n
        .spec
        .as_ref()
        .and_then(|s| s.availability)
        .map(|a| a.to_string());
    state.as_deref() == Some("ready") && avail.as_deref() != Some("drain")
}

fn holds(n: &Node, c: &str) -> bool {
    let (attr, want, eq) = match (c.split_once("=="), c.split_once("!=")) {
        (Some((a, v)), _) => (a.trim(), v.trim(), true),
        (None, Some((a, v))) => (a.trim(), v.trim(), false),
        (None, None) => return true,
    };
    match value(n, attr) {
        Some(have) => (have == want) == eq,
        // A label the node does not have: `==` fails, `!=` holds (as the swarm decides).
        None if is_known(attr) => !eq,
        None => true,
    }
}

fn is_known(attr: &str) -> bool {
    attr.starts_with("node.labels.")
        || attr.starts_with("engine.labels.")
        || matches!(attr, "node.id" | "node.hostname" | "node.role")
}

fn value(n: &Node, attr: &str) -> Option<String> {
    let spec = n.spec.as_ref();
    if let Some(k) = attr.strip_prefix("node.labels.") {
        return spec?.labels.as_ref()?.get(k).cloned();
    }
    if let Some(k) = attr.strip_prefix("engine.labels.") {
        let d = n.description.as_ref()?;
        return d.engine.as_ref()?.labels.as_ref()?.get(k).cloned();
    }
    match attr {
        "node.id" => n.id.clone(),
        "node.hostname" => n.description.as_ref()?.hostname.clone(),
        "node.role" => spec?.role.map(|r| r.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{NodeSpec, NodeState, NodeStatus};
    use std::collections::HashMap;

    fn node(id: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            id: Some(id.into()),
            spec: Some(NodeSpec {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<HashMap<_, _>>(),
                ),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(NodeState::READY),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn constraints_pick_the_nodes() {
        let nodes = [node("a", &[("db", "1")]), node("b", &[])];
        assert_eq!(eligible(&nodes, &[]), vec!["a", "b"]);
        assert_eq!(eligible(&nodes, &["node.labels.db==1".into()]), vec!["a"]);
        assert_eq!(eligible(&nodes, &["node.labels.db!=1".into()]), vec!["b"]);
        assert_eq!(eligible(&nodes, &["node.id==b".into()]), vec!["b"]);
        assert_eq!(
            eligible(&nodes, &["node.platform.os==linux".into()]),
            vec!["a", "b"]
        );
    }
}
