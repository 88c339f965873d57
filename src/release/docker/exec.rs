//! One command in a container, through the engine's exec API: stdin streamed in from a reader,
//! stdout streamed out to a writer (or kept as text), the tail of the output kept for errors.

use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{docker_err, Engine};
use crate::release::ReleaseError;

/// What an exec did.
#[derive(Debug)]
pub struct ExecOutcome {
    pub code: i64,
    pub stdout_bytes: u64,
    pub stdin_bytes: u64,
    /// The last few KiB of stderr (and of stdout when it is not streamed elsewhere).
    pub output_tail: String,
    pub stdout_text: String,
}

impl Engine {
    /// Runs `cmd` in `container`. With `stdin`, its bytes are streamed in and then closed; with
    /// `stdout`, the command's stdout is streamed there (else kept as text). `progress` sees the
    /// byte count moved so far.
    pub async fn exec<R, W>(
        &self,
        container: &str,
        cmd: &[String],
        stdin: Option<R>,
        mut stdout: Option<W>,
        mut progress: impl FnMut(u64),
    ) -> Result<ExecOutcome, ReleaseError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        let what = format!("run {:?} in {container}", cmd);
        let created = self
            .d
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdin: Some(stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(docker_err(what.clone()))?;
        let started = self
            .d
            .start_exec(&created.id, None)
            .await
            .map_err(docker_err(what.clone()))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(ReleaseError::Failed(format!(
                "{what}: the engine did not attach to the command"
            )));
        };
        let fed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fed2 = fed.clone();
        let feeder = stdin.map(|mut r| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n_total = 0u64;
                loop {
                    let n = r.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    input.write_all(&buf[..n]).await?;
                    n_total += n as u64;
                    fed2.store(n_total, std::sync::atomic::Ordering::Relaxed);
                }
                input.flush().await?;
                input.shutdown().await?;
                // Keep the write half alive until the output ends (dropping it may close the stream).
                Ok::<(u64, _), std::io::Error>((n_total, input))
            })
        });
        let mut tail = Tail::default();
        let mut text = Vec::new();
        let mut out_bytes = 0u64;
        let mut last_progress = Instant::now();
        // While stdin is fed and nothing comes out, a tick reports the bytes fed so far.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let item = tokio::select! {
                item = output.next() => match item {
                    Some(item) => item,
                    None => break,
                },
                _ = tick.tick(), if feeder.is_some() => {
                    progress(fed.load(std::sync::atomic::Ordering::Relaxed));
                    continue;
                }
            };
            match item.map_err(docker_err(what.clone()))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    out_bytes += message.len() as u64;
                    match stdout.as_mut() {
                        Some(w) => w.write_all(&message).await.map_err(|e| {
                            ReleaseError::Failed(format!("{what}: cannot write its output: {e}"))
                        })?,
                        None => {
                            if text.len() < 64 * 1024 {
                                text.extend_from_slice(&message);
                            }
                            tail.push(&message);
                        }
                    }
                    if stdout.is_some() && last_progress.elapsed() > Duration::from_millis(250) {
                        progress(out_bytes);
                        last_progress = Instant::now();
                    }
                }
                LogOutput::StdErr { message } => tail.push(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        if let Some(w) = stdout.as_mut() {
            w.flush().await.map_err(|e| {
                ReleaseError::Failed(format!("{what}: cannot write its output: {e}"))
            })?;
        }
        let mut in_bytes = 0;
        if let Some(f) = feeder {
            match f.await {
                Ok(Ok((n, _))) => in_bytes = n,
                Ok(Err(e)) => {
                    tail.push(format!("\n(switchyard: feeding stdin failed: {e})").as_bytes())
                }
                Err(e) => {
                    tail.push(format!("\n(switchyard: feeding stdin failed: {e})").as_bytes())
                }
            }
            progress(in_bytes);
        } else if stdout.is_some() {
            progress(out_bytes);
        }
        // The exit code may lag the end of the stream by a moment.
        let end = Instant::now() + Duration::from_secs(10);
        let code = loop {
            let i = self
                .d
                .inspect_exec(&created.id)
                .await
                .map_err(docker_err(what.clone()))?;
            match (i.running, i.exit_code) {
                (Some(false), Some(c)) => break c,
                _ if Instant::now() > end => {
                    return Err(ReleaseError::Failed(format!(
                        "{what}: no exit code from the engine"
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Ok(ExecOutcome {
            code,
            stdout_bytes: out_bytes,
            stdin_bytes: in_bytes,
            output_tail: tail.text(),
            stdout_text: String::from_utf8_lossy(&text).into_owned(),
        })
    }
}

/// The last few KiB of a command's output, for error messages.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    const MAX: usize = 4096;
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > Self::MAX {
            let cut = self.0.len() - Self::MAX;
            self.0.drain(..cut);
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).trim().to_string()
    }
}
