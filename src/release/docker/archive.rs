//! Files in and out of containers through the engine's archive API, with no helper image (nothing
//! can be pulled, and an app image may have no `tar`): `GET /containers/{id}/archive?path=P`
//! streams a tar of P (its top entry is P's basename) from a running or stopped container, and
//! `PUT /containers/{id}/archive?path=DIR` extracts a tar into DIR of a created or stopped one,
//! keeping owners and modes. Both see the container's volume mounts, also before it ever started.
//! Streams both ways: an archive is never held in memory whole.

use bollard::container::{DownloadFromContainerOptions, UploadToContainerOptions};
use bollard::models::MountPointTypeEnum;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{docker_err, is_not_found, Engine};
use crate::release::ReleaseError;

impl Engine {
    /// A tar of `path` in `container`, as a stream of chunks.
    pub fn download(
        &self,
        container: &str,
        path: &str,
    ) -> impl Stream<Item = Result<Bytes, ReleaseError>> + '_ {
        let what = format!("give the files of {path} in {container}");
        self.d
            .download_from_container(
                container,
                Some(DownloadFromContainerOptions {
                    path: path.to_string(),
                }),
            )
            .map(move |r| r.map_err(docker_err(what.clone())))
    }

    /// Extracts the tar that `body` streams into the folder `dir` of `container`.
    pub async fn upload(
        &self,
        container: &str,
        dir: &str,
        body: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<(), ReleaseError> {
        self.d
            .upload_to_container_streaming(
                container,
                Some(UploadToContainerOptions {
                    path: dir.to_string(),
                    no_overwrite_dir_non_dir: "true".to_string(),
                }),
                body,
            )
            .await
            .map_err(docker_err(format!(
                "extract files into {dir} of {container}"
            )))
    }

    /// Whether `container` mounts the named volume `volume` at `mount`; Err names what is wrong
    /// (no such container, no such volume, mounted elsewhere or not at all).
    pub async fn check_volume_mount(
        &self,
        container: &str,
        volume: &str,
        mount: &str,
    ) -> Result<(), ReleaseError> {
        match self.d.inspect_volume(volume).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(ReleaseError::Failed(format!(
                    "volume {volume} does not exist on this engine"
                )))
            }
            Err(e) => return Err(docker_err(format!("inspect volume {volume}"))(e)),
        }
        let c = self
            .d
            .inspect_container(container, None)
            .await
            .map_err(docker_err(format!("inspect container {container}")))?;
        let mounts = c.mounts.unwrap_or_default();
        let m = mounts.iter().find(|m| {
            m.typ == Some(MountPointTypeEnum::VOLUME) && m.name.as_deref() == Some(volume)
        });
        match m.and_then(|m| m.destination.as_deref()) {
            Some(d) if d.trim_end_matches('/') == mount.trim_end_matches('/') => Ok(()),
            Some(d) => Err(ReleaseError::Failed(format!(
                "{container} mounts volume {volume} at {d}, not at {mount} as the config says"
            ))),
            None => Err(ReleaseError::Failed(format!(
                "{container} does not mount volume {volume} (the config mounts it at {mount})"
            ))),
        }
    }
}
