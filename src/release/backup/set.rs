//! The backup set on disk, and reading it back: `backups/{site}/{stamp}-{color}-{version}/` (0700)
//! holding one file per member (0600) and `manifest.json` (0600), written last. A set is built in
//! `.{id}.partial/` and renamed into place only once every member was read back and verified, so
//! a set folder without a `.partial` suffix is complete; a crash leaves a `.partial` that prune
//! removes.
//!
//! Sets written before sets existed (`{stem}.dump` beside `{stem}.manifest.json`) are read as
//! one-member sets: listed, verified, restored and pruned like the others.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files;
use crate::release::ReleaseError;

/// The version of the manifest format. Readers refuse a set whose format is newer, or that has a
/// member of a kind they do not know, before touching anything; fields they do not know are kept
/// out of their way (ignored), so later versions may add them (see docs/backups.md).
pub const FORMAT: u32 = 1;

pub const MANIFEST: &str = "manifest.json";

/// What a member holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberKind {
    /// A full dump of the database, as its service's `backup` command printed it.
    Db,
    /// A tar archive of a data volume, as the engine's archive API gives it (top entry: the
    /// mount folder).
    Volume,
    /// The changes the database made after the member named in `follows` (the online flow: a
    /// binlog delta as `mariadb-binlog` printed it), applied in list order after the full dump.
    DbDelta,
}

/// One member of a set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub kind: MemberKind,
    /// The service it was taken from (the db service; the service that mounts the volume).
    pub service: String,
    /// The volume's name in the config (kind volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Where that service mounts the volume (kind volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// File name inside the set folder.
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// Kind volume: what the archive holds, for checking a restore against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Files>,
    /// Kind db-delta: the member this one continues (the full dump or the previous delta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<String>,
    /// Online flow: the change-log position the member ends at (`FILE:POS` of the binlog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
}

/// The content of a volume archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Files {
    /// The archive's top entry (the mount folder's name).
    pub top: String,
    pub entries: u64,
    pub regular_files: u64,
    pub content_bytes: u64,
    /// sha256 of the canonical listing (path, kind, mode, uid:gid, size, sha256 of the content).
    pub listing_sha256: String,
}

/// `manifest.json` of a set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub site: String,
    pub color: String,
    pub version: String,
    #[serde(default)]
    pub prefix: String,
    /// When the first member was started.
    pub taken_at: String,
    /// When the last member was read back and verified.
    pub verified_at: String,
    /// Whether the site was read-only from before the first member to after the last (the
    /// members agree with each other).
    #[serde(default)]
    pub read_only: bool,
    pub members: Vec<Member>,
    /// What `verify_restore` printed on the database the set was taken from, in the same
    /// read-only window (absent: none configured, or not taken read-only). A drill's restore must
    /// print the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_restore: Option<String>,
    /// Online flow: `CHECKSUM TABLE` of every table at the switch (`db.table` → checksum), equal
    /// on both sides; what a restore of the set must give again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<std::collections::BTreeMap<String, String>>,
}

impl Manifest {
    pub fn size(&self) -> u64 {
        self.members.iter().map(|m| m.size).sum()
    }

    pub fn member(&self, kind: MemberKind, volume: Option<&str>) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.kind == kind && m.volume.as_deref() == volume)
    }
}

/// The manifest written next to a dump before sets existed.
#[derive(Debug, Clone, Deserialize)]
struct LegacyManifest {
    file: String,
    site: String,
    color: String,
    version: String,
    created: String,
    size: u64,
    sha256: String,
    verified_at: String,
}

/// A set found on disk.
#[derive(Debug, Clone)]
pub struct Set {
    /// The folder's name (or the stem of a legacy dump): what the journal and the CLI name it by.
    pub id: String,
    /// Where its member files are.
    pub dir: PathBuf,
    /// Its manifest, or why it cannot be read.
    pub manifest: Result<Manifest, String>,
    /// A single-file backup from before sets.
    pub legacy: bool,
}

impl Set {
    pub fn path_of(&self, m: &Member) -> PathBuf {
        self.dir.join(&m.file)
    }

    /// Every file and folder that belongs to this set (what prune removes).
    fn paths(&self, site_dir: &Path) -> Vec<PathBuf> {
        if self.legacy {
            vec![
                site_dir.join(format!("{}.dump", self.id)),
                site_dir.join(format!("{}.manifest.json", self.id)),
            ]
        } else {
            vec![self.dir.clone()]
        }
    }

    pub fn remove(&self, site_dir: &Path) -> std::io::Result<()> {
        for p in self.paths(site_dir) {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Reads a set folder's manifest, refusing what this version cannot restore.
pub fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let p = dir.join(MANIFEST);
    let b = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&b).map_err(|e| format!("{} is not JSON: {e}", p.display()))?;
    let format = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format > FORMAT as u64 {
        return Err(format!(
            "{} has format {format}; this switchyard reads format {FORMAT} (upgrade switchyard to restore it)",
            p.display()
        ));
    }
    if let Some(kinds) = v.get("members").and_then(|m| m.as_array()) {
        for k in kinds.iter().filter_map(|m| m.get("kind")?.as_str()) {
            if !matches!(k, "db" | "volume" | "db-delta") {
                return Err(format!(
                    "{} has a member of kind `{k}` that this switchyard does not know (upgrade switchyard to restore it)",
                    p.display()
                ));
            }
        }
    }
    serde_json::from_value(v).map_err(|e| format!("{} is not a set manifest: {e}", p.display()))
}

fn legacy_manifest(site_dir: &Path, stem: &str) -> Result<Manifest, String> {
    let p = site_dir.join(format!("{stem}.manifest.json"));
    let b =
        std::fs::read(&p).map_err(|e| format!("no readable manifest ({}: {e})", p.display()))?;
    let m: LegacyManifest =
        serde_json::from_slice(&b).map_err(|e| format!("{} is corrupt: {e}", p.display()))?;
    Ok(Manifest {
        format: 0,
        site: m.site,
        color: m.color,
        version: m.version,
        prefix: String::new(),
        taken_at: m.created,
        verified_at: m.verified_at,
        read_only: false,
        members: vec![Member {
            name: "db".into(),
            kind: MemberKind::Db,
            service: String::new(),
            volume: None,
            mount: None,
            file: m.file,
            size: m.size,
            sha256: m.sha256,
            files: None,
            follows: None,
            position: None,
        }],
        verify_restore: None,
        tables: None,
    })
}

/// Every set of a site, newest first (ids start with the time they were taken).
pub fn list(site_dir: &Path) -> Result<Vec<Set>, ReleaseError> {
    let rd = match std::fs::read_dir(site_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReleaseError::Io {
                what: "read the backups folder".into(),
                path: site_dir.to_path_buf(),
                source,
            })
        }
    };
    let mut sets: Vec<Set> = Vec::new();
    let mut legacy: Vec<String> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            sets.push(Set {
                manifest: read_manifest(&e.path()),
                dir: e.path(),
                id: name,
                legacy: false,
            });
        } else if let Some(s) = name
            .strip_suffix(".manifest.json")
            .or_else(|| name.strip_suffix(".dump"))
        {
            legacy.push(s.to_string());
        }
    }
    legacy.sort();
    legacy.dedup();
    for stem in legacy {
        sets.push(Set {
            manifest: legacy_manifest(site_dir, &stem),
            dir: site_dir.to_path_buf(),
            id: stem,
            legacy: true,
        });
    }
    sets.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(sets)
}

/// The set `id` of a site (an id ending in `.dump`, as journals of before sets name it, is the
/// legacy backup of that stem).
pub fn find(site_dir: &Path, id: &str) -> Result<Option<Set>, ReleaseError> {
    let id = id.strip_suffix(".dump").unwrap_or(id);
    Ok(list(site_dir)?.into_iter().find(|s| s.id == id))
}

/// What checking one member found.
#[derive(Debug, Clone, Serialize)]
pub struct MemberCheck {
    pub name: String,
    pub file: String,
    pub size: u64,
    /// None: it matches its manifest.
    pub error: Option<String>,
    /// Kind volume, read back: the archive's listing.
    #[serde(skip)]
    pub listing: Option<super::tarlist::Listing>,
}

/// Re-reads every member and checks its size and sha256 against the manifest. With `listings`,
/// also lists each volume archive (checked against the manifest's listing digest, and kept in the
/// answer for comparing a restore with). `progress` sees (member, bytes read so far).
pub async fn verify(
    set: &Set,
    listings: bool,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Vec<MemberCheck>, String> {
    let m = set.manifest.as_ref().map_err(|e| e.clone())?;
    if let Some(why) = broken_chain(m) {
        return Err(why);
    }
    let mut out = Vec::new();
    for mem in &m.members {
        let path = set.path_of(mem);
        let name = mem.name.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let tar = listings && mem.kind == MemberKind::Volume;
        let hashing = files::hash_file(&path, tar, move |n| {
            let _ = tx.send(n);
        });
        tokio::pin!(hashing);
        let got = loop {
            tokio::select! {
                r = &mut hashing => break r,
                Some(n) = rx.recv() => progress(&name, n),
            }
        };
        let (error, listing) = match got {
            Err(e) => (Some(format!("cannot read {}: {e}", path.display())), None),
            Ok((size, _, _)) if size != mem.size => (
                Some(format!(
                    "size is {size} bytes, the manifest says {}",
                    mem.size
                )),
                None,
            ),
            Ok((_, sha, _)) if sha != mem.sha256 => (
                Some(format!("sha256 is {sha}, the manifest says {}", mem.sha256)),
                None,
            ),
            Ok((_, _, Some(l))) => match &mem.files {
                Some(f) if f.listing_sha256 != l.digest() => (
                    Some("its content listing differs from the manifest's".to_string()),
                    None,
                ),
                _ => (None, Some(l)),
            },
            Ok(_) => (None, None),
        };
        out.push(MemberCheck {
            name: mem.name.clone(),
            file: mem.file.clone(),
            size: mem.size,
            error,
            listing,
        });
    }
    Ok(out)
}

/// Why the deltas of a set do not form one chain after its dump (each must name the member
/// before it in `follows`), if they do not.
pub fn broken_chain(m: &Manifest) -> Option<String> {
    let mut before: Option<&str> = None;
    for mem in &m.members {
        match mem.kind {
            MemberKind::Db => before = Some(&mem.name),
            MemberKind::DbDelta => {
                let follows = mem.follows.as_deref();
                if before.is_none() || follows != before {
                    return Some(format!(
                        "its delta {} follows {}, but the member before it is {}; the deltas are out of order or one is missing",
                        mem.name,
                        follows.unwrap_or("nothing"),
                        before.unwrap_or("no dump")
                    ));
                }
                before = Some(&mem.name);
            }
            MemberKind::Volume => {}
        }
    }
    None
}

/// The first member that does not verify, as one line (`member NAME (FILE): WHY`), if any.
pub fn first_bad(checks: &[MemberCheck]) -> Option<String> {
    checks.iter().find_map(|c| {
        c.error
            .as_ref()
            .map(|e| format!("member {} ({}): {e}", c.name, c.file))
    })
}

/// What prune did.
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    pub broken: Vec<(String, String)>,
    /// Verified sets past `keep` that are kept because they are not off-site yet.
    pub unsent: Vec<String>,
}

/// Keeps the newest `keep` sets that verify whole, removes older verified ones and leftover
/// `.partial` folders and files; sets that do not verify are reported and left for a person.
/// Never removes the only verified set (`keep` is at least 1, and one is kept before any goes).
/// With `dry_run` nothing is removed: `removed` lists what would be. `unsent` says which sets
/// have no off-site copy yet (with `[backups.offsite]`): those are kept past `keep` until they are
/// copied, so a long outage of the repository never prunes a set that exists nowhere else.
pub async fn prune(
    site_dir: &Path,
    keep: usize,
    dry_run: bool,
    unsent: &dyn Fn(&Set) -> bool,
) -> Result<PruneReport, ReleaseError> {
    let mut r = PruneReport::default();
    let keep = keep.max(1);
    for set in list(site_dir)? {
        let bad = match verify(&set, false, &|_, _| {}).await {
            Ok(checks) => first_bad(&checks),
            Err(e) => Some(e),
        };
        match bad {
            None if r.kept.len() < keep => r.kept.push(set.id),
            None if unsent(&set) => r.unsent.push(set.id),
            None if dry_run => r.removed.push(set.id),
            None => {
                set.remove(site_dir).map_err(|source| ReleaseError::Io {
                    what: "remove an old backup set".into(),
                    path: set.dir.clone(),
                    source,
                })?;
                r.removed.push(set.id);
            }
            Some(why) => r.broken.push((set.id, why)),
        }
    }
    let leftovers = if dry_run {
        None
    } else {
        std::fs::read_dir(site_dir).ok()
    };
    if let Some(rd) = leftovers {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with('.') && name.ends_with(".partial")) {
                continue;
            }
            let p = e.path();
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if gone.is_ok() {
                r.removed.push(name);
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_legacy_dumps_as_one_member_sets() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = t.path();
        std::fs::write(d.join("20250101T000000.000Z-blue-1.dump"), b"x").unwrap_or_default();
        std::fs::write(
            d.join("20250101T000000.000Z-blue-1.manifest.json"),
            br#"{"file":"20250101T000000.000Z-blue-1.dump","site":"w","color":"blue","version":"1","created":"t","size":1,"sha256":"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","verified_at":"t"}"#,
        )
        .unwrap_or_default();
        let sets = list(d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sets.len(), 1);
        assert!(sets[0].legacy);
        let m = sets[0].manifest.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.members.len(), 1);
        assert_eq!(m.members[0].kind, MemberKind::Db);
        assert!(find(d, "20250101T000000.000Z-blue-1.dump")
            .ok()
            .flatten()
            .is_some());
    }

    /// Past `keep`, a set without an off-site copy is kept (reported as unsent), the others go.
    #[tokio::test]
    async fn prune_keeps_sets_not_off_site_yet() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = t.path();
        for day in ["01", "02", "03"] {
            let id = format!("202501{day}T000000.000Z-blue-1");
            std::fs::write(d.join(format!("{id}.dump")), b"x").unwrap_or_default();
            std::fs::write(
                d.join(format!("{id}.manifest.json")),
                format!(r#"{{"file":"{id}.dump","site":"w","color":"blue","version":"1","created":"t","size":1,"sha256":"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","verified_at":"t"}}"#),
            )
            .unwrap_or_default();
        }
        let oldest = "20250101T000000.000Z-blue-1";
        let r = prune(d, 1, false, &|s: &Set| s.id == oldest)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.kept, ["20250103T000000.000Z-blue-1"]);
        assert_eq!(r.removed, ["20250102T000000.000Z-blue-1"]);
        assert_eq!(r.unsent, [oldest]);
        assert_eq!(list(d).map(|l| l.len()).unwrap_or_default(), 2);
    }

    /// The deltas of an online set form one chain after the dump; one out of order or missing
    /// breaks the set (`backups verify` and a restore refuse it).
    #[test]
    fn deltas_follow_the_dump_in_order() {
        let member = |name: &str, kind: MemberKind, follows: Option<&str>| Member {
            name: name.into(),
            kind,
            service: "db".into(),
            volume: None,
            mount: None,
            file: format!("{name}.sql"),
            size: 1,
            sha256: "x".into(),
            files: None,
            follows: follows.map(str::to_string),
            position: None,
        };
        let mut m = Manifest {
            format: FORMAT,
            site: "w".into(),
            color: "blue".into(),
            version: "1".into(),
            prefix: String::new(),
            taken_at: "t".into(),
            verified_at: "t".into(),
            read_only: true,
            members: vec![
                member("db", MemberKind::Db, None),
                member("db-delta-1", MemberKind::DbDelta, Some("db")),
                member("db-delta-2", MemberKind::DbDelta, Some("db-delta-1")),
            ],
            tables: None,
            verify_restore: None,
        };
        assert_eq!(broken_chain(&m), None);
        m.members.swap(1, 2);
        let why = broken_chain(&m).unwrap_or_default();
        assert!(
            why.contains("db-delta-2 follows db-delta-1, but the member before it is db"),
            "{why}"
        );
        m.members.remove(1);
        assert!(broken_chain(&m).is_none());
        m.members[1].follows = Some("db-delta-0".into());
        assert!(broken_chain(&m).is_some());
    }

    #[test]
    fn refuses_what_it_cannot_restore() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let d = t.path();
        std::fs::write(d.join(MANIFEST), br#"{"format":2}"#).unwrap_or_default();
        assert!(read_manifest(d).unwrap_err().contains("format 2"));
        std::fs::write(
            d.join(MANIFEST),
            br#"{"format":1,"site":"w","color":"blue","version":"1","taken_at":"t","verified_at":"t","members":[{"name":"b","kind":"wal","service":"db","file":"b","size":1,"sha256":"x"}]}"#,
        )
        .unwrap_or_default();
        assert!(read_manifest(d).unwrap_err().contains("`wal`"));
    }
}
