//! What an environment is called on the engine: `{prefix}-{color}-{service}` containers on network
//! `{prefix}-{color}`, volumes `{prefix}-{color}-{volume}`, and the labels listing finds them by.

use std::collections::HashMap;

use crate::config::{Color, ServiceConfig};

pub const LABEL_SITE: &str = "switchyard.site";
pub const LABEL_COLOR: &str = "switchyard.color";
pub const LABEL_VERSION: &str = "switchyard.version";
pub const LABEL_PREFIX: &str = "switchyard.prefix";
pub const LABEL_SERVICE: &str = "switchyard.service";

/// What names an environment: site, prefix, color, version.
#[derive(Debug, Clone)]
pub struct EnvId {
    pub site: String,
    pub prefix: String,
    pub color: Color,
    pub version: String,
}

impl EnvId {
    pub fn network(&self) -> String {
        format!("{}-{}", self.prefix, self.color)
    }
    pub fn container(&self, service: &str) -> String {
        format!("{}-{}-{service}", self.prefix, self.color)
    }
    pub fn volume(&self, vol: &str) -> String {
        format!("{}-{}-{vol}", self.prefix, self.color)
    }
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_SITE.to_string(), self.site.clone()),
            (LABEL_COLOR.to_string(), self.color.to_string()),
            (LABEL_VERSION.to_string(), self.version.clone()),
            (LABEL_PREFIX.to_string(), self.prefix.clone()),
        ])
    }
}

/// The image of a service at a version: `{version}` replaced.
pub fn image_of(svc: &ServiceConfig, version: &str) -> String {
    svc.image.replace("{version}", version)
}
