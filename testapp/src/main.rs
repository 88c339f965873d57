//! sy-testapp: a tiny two-tier application for switchyard's release tests.
//! Roles (argv[1]): db, web, dump, restore, migrate, verify, readonly, fail.
//! See README.md beside Cargo.toml.

mod files;
mod http;
mod json;

use http::{Request, Response};
use json::Json;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::{env, fs, process};

/// Highest schema this binary knows how to migrate to.
const MAX_SCHEMA: i64 = 2;

const USAGE: &str = "usage: sy-testapp <db|web|dump|restore|migrate|verify|readonly on|off|fail>
  db        database server on 0.0.0.0:5000 (DB_PORT), data in $DATA_DIR/db.json (/data)
  web       web server on 0.0.0.0:$PORT (80), talks to $DB_ADDR (db:5000), uploads in $FILES_DIR (/files)
  dump      print the database file (JSON) on stdout
  restore   read a dump on stdin, validate it, write it atomically as the database file
  migrate   ask the db at $DB_ADDR to migrate to the schema of $APP_VERSION
  verify    check the database file parses; print its note count
  readonly  on|off: create/remove the web's read-only flag ($READ_ONLY_FILE, /tmp/sy-read-only)
  fail      print an error and exit 3 (fault injection)
env: APP_VERSION (1), SY_HEALTH_FAIL=1 (web /health always 503), STARTUP_DELAY_MS (delay before listening)";

fn version() -> String {
    env::var("APP_VERSION").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "1".into())
}

/// The schema a given app version expects: its major number (1 -> 1, 2 -> 2).
fn schema_for(version: &str) -> i64 {
    version.trim().split('.').next().and_then(|m| m.parse::<i64>().ok()).filter(|v| *v >= 1).unwrap_or(1)
}

fn data_file() -> PathBuf {
    Path::new(&env::var("DATA_DIR").unwrap_or_else(|_| "/data".into())).join("db.json")
}

fn db_addr() -> String {
    env::var("DB_ADDR").unwrap_or_else(|_| "db:5000".into())
}

fn read_only_file() -> PathBuf {
    PathBuf::from(env::var("READ_ONLY_FILE").unwrap_or_else(|_| "/tmp/sy-read-only".into()))
}

fn die(code: i32, msg: impl std::fmt::Display) -> ! {
    eprintln!("sy-testapp: {msg}");
    process::exit(code)
}

// ---------------------------------------------------------------- data model

#[derive(Clone, Debug, PartialEq)]
struct Note {
    id: i64,
    text: String,
    author: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
struct Db {
    schema: i64,
    notes: Vec<Note>,
}

impl Note {
    fn to_json(&self) -> Json {
        let mut f = vec![("id".to_string(), Json::Int(self.id)), ("text".to_string(), Json::Str(self.text.clone()))];
        if let Some(a) = &self.author {
            f.push(("author".to_string(), Json::Str(a.clone())));
        }
        Json::Obj(f)
    }
    fn from_json(v: &Json, i: usize) -> Result<Note, String> {
        let id = v.get("id").and_then(Json::as_i64).ok_or_else(|| format!("notes[{i}]: missing integer \"id\""))?;
        let text = v.get("text").and_then(Json::as_str).ok_or_else(|| format!("notes[{i}]: missing string \"text\""))?;
        let author = match v.get("author") {
            None | Some(Json::Null) => None,
            Some(Json::Str(s)) => Some(s.clone()),
            Some(_) => return Err(format!("notes[{i}]: \"author\" must be a string")),
        };
        Ok(Note { id, text: text.to_string(), author })
    }
}

impl Db {
    fn fresh() -> Db {
        Db { schema: schema_for(&version()), notes: Vec::new() }
    }
    fn notes_json(&self) -> Json {
        Json::Arr(self.notes.iter().map(Note::to_json).collect())
    }
    fn to_json(&self) -> Json {
        Json::Obj(vec![("schema".into(), Json::Int(self.schema)), ("notes".into(), self.notes_json())])
    }
    fn parse(text: &str) -> Result<Db, String> {
        let v = json::parse(text)?;
        if !matches!(v, Json::Obj(_)) {
            return Err("top level must be an object".into());
        }
        let schema = v.get("schema").and_then(Json::as_i64).ok_or("missing integer \"schema\"")?;
        if schema < 1 {
            return Err(format!("bad schema {schema}"));
        }
        let notes = match v.get("notes") {
            Some(Json::Arr(items)) => items.iter().enumerate().map(|(i, n)| Note::from_json(n, i)).collect::<Result<Vec<_>, _>>()?,
            _ => return Err("missing array \"notes\"".into()),
        };
        Ok(Db { schema, notes })
    }
}

/// Reads the database file: Ok(None) when it does not exist.
fn load(path: &Path) -> Result<Option<Db>, String> {
    match fs::read_to_string(path) {
        Ok(text) => Db::parse(&text).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes atomically: temporary file in the same directory, fsync, rename, fsync the directory.
fn save(path: &Path, db: &Db) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".db.json.tmp.{}.{}", process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed)));
    let mut text = db.to_json().to_string();
    text.push('\n');
    let res = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

// ---------------------------------------------------------------- db role

static WRITE_LOCK: Mutex<()> = Mutex::new(());

fn db_handle(req: &Request) -> Response {
    let path = data_file();
    let current = || -> Result<Db, Response> {
        match load(&path) {
            Ok(Some(db)) => Ok(db),
            Ok(None) => {
                let db = Db::fresh();
                save(&path, &db).map_err(|e| Response::text(500, e))?;
                Ok(db)
            }
            Err(e) => Err(Response::text(500, e)),
        }
    };
    let m = req.method.as_str();
    match (m, req.path.as_str()) {
        ("GET" | "HEAD", "/health") => Response::text(200, "ok"),
        ("GET" | "HEAD", "/schema") => match current() {
            Ok(db) => Response::json(200, format!("{{\"schema\":{}}}", db.schema)),
            Err(r) => r,
        },
        ("GET" | "HEAD", "/notes") => match current() {
            Ok(db) => Response::json(200, db.notes_json().to_string()),
            Err(r) => r,
        },
        ("GET" | "HEAD", "/dump") => match current() {
            Ok(db) => Response::json(200, db.to_json().to_string()),
            Err(r) => r,
        },
        ("POST", "/notes") => {
            let text = match String::from_utf8(req.body.clone()) {
                Ok(t) if !t.trim().is_empty() => t,
                Ok(_) => return Response::text(400, "empty note"),
                Err(_) => return Response::text(400, "note must be UTF-8"),
            };
            let _g = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut db = match current() {
                Ok(db) => db,
                Err(r) => return r,
            };
            let id = db.notes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
            let author = if db.schema >= 2 {
                Some(req.query_param("author").or_else(|| req.header("x-author").map(str::to_string)).unwrap_or_else(|| "unknown".into()))
            } else {
                None
            };
            let note = Note { id, text, author };
            db.notes.push(note.clone());
            match save(&path, &db) {
                Ok(()) => Response::json(201, note.to_json().to_string()),
                Err(e) => Response::text(500, e),
            }
        }
        ("POST", "/migrate") => {
            let to = match req.query_param("to").and_then(|t| t.parse::<i64>().ok()) {
                Some(t) => t,
                None => return Response::text(400, "missing or bad ?to=N"),
            };
            let _g = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut db = match current() {
                Ok(db) => db,
                Err(r) => return r,
            };
            let from = db.schema;
            if to < 1 || to > MAX_SCHEMA {
                return Response::text(400, format!("unknown schema {to} (this db knows 1..{MAX_SCHEMA})"));
            }
            if to < from {
                return Response::text(409, format!("refusing to downgrade schema {from} to {to}"));
            }
            let mut changed = 0;
            if from < 2 && to >= 2 {
                for n in db.notes.iter_mut().filter(|n| n.author.is_none()) {
                    n.author = Some("unknown".into());
                    changed += 1;
                }
            }
            db.schema = to;
            if from != to {
                if let Err(e) = save(&path, &db) {
                    return Response::text(500, e);
                }
            }
            Response::json(200, format!("{{\"from\":{from},\"to\":{to},\"changed_notes\":{changed}}}"))
        }
        (_, "/health" | "/schema" | "/notes" | "/dump" | "/migrate") => Response::text(405, "method not allowed"),
        _ => Response::text(404, "not found"),
    }
}

// ---------------------------------------------------------------- web role

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn db_call(method: &str, target: &str, body: &[u8]) -> Result<(u16, String), String> {
    http::client(&db_addr(), method, target, body).map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
}

fn db_schema() -> Result<i64, String> {
    let (status, body) = db_call("GET", "/schema", b"")?;
    if status != 200 {
        return Err(format!("db answered {status}: {}", body.trim()));
    }
    json::parse(&body).ok().and_then(|v| v.get("schema").and_then(Json::as_i64)).ok_or_else(|| format!("bad /schema answer: {}", body.trim()))
}

fn web_handle(req: &Request) -> Response {
    let v = version();
    if let Some(r) = files::handle(req, read_only_file().exists()) {
        return r;
    }
    let m = req.method.as_str();
    match (m, req.path.as_str()) {
        ("GET" | "HEAD", "/health") => {
            if env::var("SY_HEALTH_FAIL").map_or(false, |x| !x.is_empty() && x != "0") {
                return Response::text(503, "forced failure (SY_HEALTH_FAIL)");
            }
            let want = schema_for(&v);
            match db_schema() {
                Ok(s) if s == want => Response::text(200, "ok"),
                Ok(s) => Response::text(503, format!("schema mismatch: db has schema {s}, app version {v} expects {want}")),
                Err(e) => Response::text(503, format!("db unreachable: {e}")),
            }
        }
        ("GET" | "HEAD", "/version") => Response::text(200, v),
        ("GET" | "HEAD", "/notes") => match db_call("GET", "/notes", b"") {
            Ok((200, body)) => Response::json(200, body),
            Ok((s, body)) => Response::text(502, format!("db answered {s}: {}", body.trim())),
            Err(e) => Response::text(503, format!("db unreachable: {e}")),
        },
        ("POST", "/notes") => {
            if read_only_file().exists() {
                return Response::text(503, "read-only: writes are disabled");
            }
            let target = if req.query.is_empty() { "/notes".to_string() } else { format!("/notes?{}", req.query) };
            match db_call("POST", &target, &req.body) {
                Ok((201, body)) => Response::json(201, body),
                Ok((s, body)) if s < 500 => Response::text(s, body),
                Ok((s, body)) => Response::text(502, format!("db answered {s}: {}", body.trim())),
                Err(e) => Response::text(503, format!("db unreachable: {e}")),
            }
        }
        ("GET" | "HEAD", "/") => {
            let read_only = req.header("x-read-only").is_some() || read_only_file().exists();
            let mut page = format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>sy-testapp v{0}</title></head>\n<body>\n",
                html_escape(&v)
            );
            if read_only {
                page.push_str("<div class=\"banner\" id=\"read-only\">read-only</div>\n");
            }
            page.push_str(&format!("<h1>Notes</h1>\n<p class=\"version\">app version {}</p>\n", html_escape(&v)));
            let status = match db_call("GET", "/notes", b"").and_then(|(s, b)| {
                if s == 200 { json::parse(&b) } else { Err(format!("db answered {s}")) }
            }) {
                Ok(Json::Arr(notes)) => {
                    page.push_str("<ul class=\"notes\">\n");
                    for n in &notes {
                        let id = n.get("id").and_then(Json::as_i64).unwrap_or(0);
                        let text = n.get("text").and_then(Json::as_str).unwrap_or("");
                        page.push_str(&format!("<li data-id=\"{id}\">{}", html_escape(text)));
                        if let Some(a) = n.get("author").and_then(Json::as_str) {
                            page.push_str(&format!(" <em class=\"author\">({})</em>", html_escape(a)));
                        }
                        page.push_str("</li>\n");
                    }
                    page.push_str(&format!("</ul>\n<p class=\"count\">{} notes</p>\n", notes.len()));
                    200
                }
                Ok(_) => {
                    page.push_str("<p class=\"error\">db error: unexpected answer</p>\n");
                    502
                }
                Err(e) => {
                    page.push_str(&format!("<p class=\"error\">db error: {}</p>\n", html_escape(&e)));
                    503
                }
            };
            page.push_str("</body></html>\n");
            Response::new(status, "text/html; charset=utf-8", page)
        }
        (_, "/" | "/health" | "/version" | "/notes") => Response::text(405, "method not allowed"),
        _ => Response::text(404, "not found"),
    }
}

// ---------------------------------------------------------------- process plumbing

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(code: i32) -> !;
}

extern "C" fn on_term(_sig: i32) {
    // All writes are atomic renames, so stopping anywhere is safe. Exiting here
    // matters: as PID 1 in a container, SIGTERM would otherwise be ignored.
    unsafe { _exit(0) }
}

fn install_signal_handlers() {
    unsafe {
        signal(15, on_term); // SIGTERM
        signal(2, on_term); // SIGINT
    }
}

fn listen(default_port: u16, port_var: &str) -> TcpListener {
    if let Some(ms) = env::var("STARTUP_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let port = env::var(port_var).ok().and_then(|p| p.parse::<u16>().ok()).unwrap_or(default_port);
    let addr = format!("0.0.0.0:{port}");
    TcpListener::bind(&addr).unwrap_or_else(|e| die(1, format!("cannot listen on {addr}: {e}")))
}

fn main() {
    let args: Vec<String> = env::args().collect();
    let role = args.get(1).map(String::as_str).unwrap_or("");
    let v = version();
    match role {
        "db" => {
            install_signal_handlers();
            let path = data_file();
            let db = match load(&path) {
                Ok(Some(db)) => db,
                Ok(None) => {
                    let db = Db::fresh();
                    save(&path, &db).unwrap_or_else(|e| die(1, e));
                    eprintln!("sy-testapp db: created {} at schema {}", path.display(), db.schema);
                    db
                }
                Err(e) => die(1, e),
            };
            let l = listen(5000, "DB_PORT");
            eprintln!("sy-testapp db v{v}: listening on {} (schema {}, {} notes in {})",
                l.local_addr().unwrap(), db.schema, db.notes.len(), path.display());
            http::serve(l, v, Arc::new(db_handle));
        }
        "web" => {
            install_signal_handlers();
            let l = listen(80, "PORT");
            eprintln!("sy-testapp web v{v}: listening on {}, db at {}", l.local_addr().unwrap(), db_addr());
            http::serve(l, v, Arc::new(web_handle));
        }
        "dump" => {
            let path = data_file();
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => die(1, format!("dump: cannot read {}: {e}", path.display())),
            };
            if let Err(e) = Db::parse(&text) {
                die(1, format!("dump: {} is corrupt: {e}", path.display()));
            }
            let mut out = std::io::stdout().lock();
            if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                die(1, "dump: cannot write to stdout");
            }
        }
        "restore" => {
            let mut input = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut input) {
                die(1, format!("restore: cannot read stdin: {e}"));
            }
            let text = String::from_utf8(input).unwrap_or_else(|_| die(1, "restore: input is not UTF-8"));
            if text.trim().is_empty() {
                die(1, "restore: empty input");
            }
            let db = Db::parse(&text).unwrap_or_else(|e| die(1, format!("restore: bad dump: {e}")));
            let path = data_file();
            save(&path, &db).unwrap_or_else(|e| die(1, format!("restore: {e}")));
            println!("restored {} notes at schema {} into {}", db.notes.len(), db.schema, path.display());
        }
        "verify" => {
            let path = data_file();
            match load(&path) {
                Ok(Some(db)) => println!("ok: {} notes, schema {}", db.notes.len(), db.schema),
                Ok(None) => die(1, format!("verify: {} does not exist", path.display())),
                Err(e) => die(1, format!("verify: {e}")),
            }
        }
        "migrate" => {
            let to = schema_for(&v);
            match db_call("POST", &format!("/migrate?to={to}"), b"") {
                Ok((200, body)) => println!("migrate: app version {v}, schema -> {to}: {}", body.trim()),
                Ok((s, body)) => die(1, format!("migrate to schema {to} failed: db answered {s}: {}", body.trim())),
                Err(e) => die(1, format!("migrate to schema {to} failed: {e}")),
            }
        }
        "readonly" => {
            let f = read_only_file();
            match args.get(2).map(String::as_str) {
                Some("on") => fs::write(&f, b"1\n").unwrap_or_else(|e| die(1, format!("readonly on: {e}"))),
                Some("off") => match fs::remove_file(&f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => die(1, format!("readonly off: {e}")),
                },
                _ => die(2, "usage: sy-testapp readonly on|off"),
            }
            println!("read-only {}", if f.exists() { "on" } else { "off" });
        }
        "fail" => die(3, "fail: injected failure (exit 3)"),
        "-h" | "--help" | "help" => println!("{USAGE}"),
        _ => die(2, USAGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_roundtrip_and_validation() {
        let db = Db { schema: 2, notes: vec![Note { id: 1, text: "a \"q\"\nb".into(), author: Some("x".into()) }] };
        assert_eq!(Db::parse(&db.to_json().to_string()).unwrap(), db);
        assert!(Db::parse("{\"schema\":1}").is_err());
        assert!(Db::parse("{\"schema\":1,\"notes\":[{\"id\":1}]}").is_err());
        assert!(Db::parse("[]").is_err());
        assert_eq!(schema_for("2"), 2);
        assert_eq!(schema_for("1.5"), 1);
        assert_eq!(schema_for("junk"), 1);
    }
}
