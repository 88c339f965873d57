//! The web role's uploads: files in `$FILES_DIR` (`/files`), a volume marked as data in the test
//! config, so a release must carry them to the new environment.
//! `PUT /files/NAME` (or POST) → 201 `{"name","size"}`, written atomically (tmp + fsync + rename),
//! 503 while read-only (like `POST /notes`); `GET /files/NAME` → the bytes, 404 if none;
//! `GET /files` → JSON `[{"name","size"}]` sorted by name.

use crate::http::{Request, Response};
use crate::json::Json;
use std::io::Write;
use std::path::PathBuf;
use std::{env, fs};

fn dir() -> PathBuf {
    PathBuf::from(env::var("FILES_DIR").unwrap_or_else(|_| "/files".into()))
}

fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Handles `/files` and `/files/NAME`; None for other paths.
pub fn handle(req: &Request, read_only: bool) -> Option<Response> {
    let path = req.path.as_str();
    if path != "/files" && !path.starts_with("/files/") {
        return None;
    }
    let m = req.method.as_str();
    if path == "/files" {
        return Some(match m {
            "GET" | "HEAD" => list(),
            _ => Response::text(405, "method not allowed"),
        });
    }
    let name = &path["/files/".len()..];
    if !valid(name) {
        return Some(Response::text(400, "file names are letters, digits, . _ - (not starting with .)"));
    }
    Some(match m {
        "GET" | "HEAD" => match fs::read(dir().join(name)) {
            Ok(b) => Response::new(200, "application/octet-stream", b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Response::text(404, "no such file"),
            Err(e) => Response::text(500, format!("cannot read {name}: {e}")),
        },
        "PUT" | "POST" if read_only => Response::text(503, "read-only: writes are disabled"),
        "PUT" | "POST" => match save(name, &req.body) {
            Ok(()) => Response::json(
                201,
                Json::Obj(vec![("name".into(), Json::Str(name.into())), ("size".into(), Json::Int(req.body.len() as i64))])
                    .to_string(),
            ),
            Err(e) => Response::text(500, e),
        },
        _ => Response::text(405, "method not allowed"),
    })
}

fn save(name: &str, body: &[u8]) -> Result<(), String> {
    let d = dir();
    fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let tmp = d.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::rename(&tmp, d.join(name))?;
        fs::File::open(&d)?.sync_all()
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {name}: {e}")
    })
}

fn list() -> Response {
    let mut items: Vec<(String, u64)> = match fs::read_dir(dir()) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let md = e.metadata().ok()?;
                (md.is_file() && !name.starts_with('.')).then_some((name, md.len()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Response::text(500, format!("cannot list {}: {e}", dir().display())),
    };
    items.sort();
    Response::json(
        200,
        Json::Arr(
            items
                .into_iter()
                .map(|(n, s)| Json::Obj(vec![("name".into(), Json::Str(n)), ("size".into(), Json::Int(s as i64))]))
                .collect(),
        )
        .to_string(),
    )
}
