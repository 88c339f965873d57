//! What the online flow asks a MariaDB: whether its binary log can be replayed, where the log is
//! now, which files hold it, and a checksum of every table. Each is one query through the db
//! image's client (`[site.release.online]`), run in the container with `docker exec`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::config::OnlineConfig;
use crate::release::context::Release;
use crate::release::engine::Engine;
use crate::release::plan::Binlog;
use crate::release::ReleaseError;

/// A place in the binary log: the file and the byte offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: String,
    pub pos: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// The position `mariadb-dump --master-data=2` wrote near the top of its dump, as
/// `-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000002', MASTER_LOG_POS=342;`.
pub fn dump_position(head: &str) -> Option<Position> {
    let line = head
        .lines()
        .take(200)
        .find(|l| l.contains("CHANGE MASTER TO") && l.contains("MASTER_LOG_FILE"))?;
    let file = line.split("MASTER_LOG_FILE='").nth(1)?.split('\'').next()?;
    let digits: String = line
        .split("MASTER_LOG_POS=")
        .nth(1)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let pos = digits.parse().ok()?;
    (!file.is_empty()).then(|| Position {
        file: file.to_string(),
        pos,
    })
}

/// The end position of the last event in (the tail of) a delta: `end_log_pos N` of its last
/// event header. A delta read completely up to `--stop-position=P` ends at P.
pub fn last_end_pos(tail: &str) -> Option<u64> {
    let at = tail.rfind("end_log_pos ")?;
    let digits: String = tail[at + "end_log_pos ".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The first row of `SHOW MASTER STATUS` (`File\tPosition\t…`); None when the log is off.
pub fn parse_status(out: &str) -> Option<Position> {
    let mut f = out.lines().next()?.split('\t');
    let file = f.next()?.trim();
    let pos = f.next()?.trim().parse().ok()?;
    (!file.is_empty()).then(|| Position {
        file: file.to_string(),
        pos,
    })
}

/// The log files from `from` to `to` (inclusive, in order) among `SHOW BINARY LOGS`' names.
pub fn files_between(logs: &str, from: &str, to: &str) -> Vec<String> {
    let mut names: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    names.sort_unstable();
    names
        .into_iter()
        .filter(|n| *n >= from && *n <= to)
        .map(str::to_string)
        .collect()
}

/// `CHECKSUM TABLE` rows (`db.table\tchecksum`) as a map.
pub fn parse_checksums(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let (t, c) = l.split_once('\t')?;
            Some((t.trim().to_string(), c.trim().to_string()))
        })
        .collect()
}

/// Every table whose checksum differs or that only one side has, at most `max`, as text.
pub fn differences(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    max: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for (t, c) in old {
        match new.get(t) {
            Some(n) if n == c => {}
            Some(n) => out.push(format!("{t}: checksum {c} on the old side, {n} on the new")),
            None => out.push(format!("{t}: missing on the new side")),
        }
    }
    for t in new.keys().filter(|t| !old.contains_key(*t)) {
        out.push(format!("{t}: only on the new side"));
    }
    out.truncate(max);
    out
}

/// The tables (`db.table`) a delta (what mariadb-binlog printed) changes rows of, from its
/// `Table_map` events; None when it holds anything else that may change a table (a DDL group or
/// a statement event), so every table must be compared.
pub fn touched(delta: &str) -> Option<BTreeSet<String>> {
    let mut tables = BTreeSet::new();
    for l in delta.lines().filter(|l| l.starts_with('#')) {
        if let Some(rest) = l.split("\tTable_map: ").nth(1) {
            let name = rest.split(" mapped to").next()?.replace('`', "");
            tables.insert(name);
        } else if l.contains("\tQuery\t") {
            return None;
        } else if let Some(g) = l.split("\tGTID ").nth(1) {
            if !g.split_whitespace().any(|w| w == "trans") {
                return None;
            }
        }
    }
    Some(tables)
}

/// The tables the comparison covers: every base table outside the server's own schemas (whose
/// statistics tables change on their own).
const TABLES: &str = "SELECT CONCAT('`', REPLACE(table_schema, '`', '``'), '`.`', REPLACE(table_name, '`', '``'), '`') FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1";

/// One query through the online flow's client in `container`: its stdout.
pub async fn sql(
    engine: &Engine,
    o: &OnlineConfig,
    container: &str,
    query: &str,
) -> Result<String, ReleaseError> {
    let out = engine
        .exec(
            container,
            &o.sql(query),
            None::<tokio::io::Empty>,
            None::<tokio::io::Sink>,
            |_| {},
        )
        .await?;
    if out.code != 0 {
        return Err(ReleaseError::Command {
            what: format!("the query `{}`", query.get(..60).unwrap_or(query)),
            container: container.into(),
            code: out.code,
            output: out.output_tail,
        });
    }
    Ok(out.stdout_text)
}

/// Whether the binary log of the db in `container` is on, and in which format.
pub async fn probe(
    engine: &Engine,
    o: &OnlineConfig,
    container: &str,
) -> Result<Binlog, ReleaseError> {
    let out = sql(engine, o, container, "SELECT @@log_bin, @@binlog_format").await?;
    let mut f = out.lines().next().unwrap_or("").split('\t');
    Ok(Binlog {
        on: f.next().map(str::trim) == Some("1"),
        format: f.next().unwrap_or("?").trim().to_string(),
    })
}

impl Release<'_> {
    /// One query through the online flow's client in `container`: its stdout.
    pub async fn sql(&self, container: &str, query: &str) -> Result<String, ReleaseError> {
        sql(&self.engine, &self.rel.online, container, query).await
    }

    /// Whether the binary log of the db in `container` is on, and in which format.
    pub async fn binlog(&self, container: &str) -> Result<Binlog, ReleaseError> {
        probe(&self.engine, &self.rel.online, container).await
    }

    /// Where the binary log of the db in `container` is now.
    pub async fn log_position(&self, container: &str) -> Result<Position, ReleaseError> {
        let out = self.sql(container, "SHOW MASTER STATUS").await?;
        parse_status(&out).ok_or_else(|| {
            ReleaseError::Failed(format!(
                "{container} reports no binary log position (SHOW MASTER STATUS is empty): its binary log is off; the online flow needs it"
            ))
        })
    }

    /// The folder (in `container`) that holds the log files.
    pub async fn log_dir(&self, container: &str) -> Result<String, ReleaseError> {
        let base = self.sql(container, "SELECT @@log_bin_basename").await?;
        Ok(base
            .trim()
            .rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_else(|| ".".into()))
    }

    /// The paths (in `container`, under `dir`) of the log files from `from.file` to `to.file`
    /// (one file: no need to ask).
    pub async fn log_files(
        &self,
        container: &str,
        dir: &str,
        from: &Position,
        to: &Position,
    ) -> Result<Vec<String>, ReleaseError> {
        if from.file == to.file {
            return Ok(vec![format!("{dir}/{}", from.file)]);
        }
        let logs = self.sql(container, "SHOW BINARY LOGS").await?;
        let files = files_between(&logs, &from.file, &to.file);
        if files.first() != Some(&from.file) || files.last() != Some(&to.file) {
            return Err(ReleaseError::Failed(format!(
                "the binary log of {container} no longer has {} (it has: {}); was it purged? The online copy cannot catch up: release again",
                from.file,
                logs.lines().filter_map(|l| l.split('\t').next()).collect::<Vec<_>>().join(" ")
            )));
        }
        Ok(files.into_iter().map(|f| format!("{dir}/{f}")).collect())
    }

    /// `CHECKSUM TABLE` of the tables (see [`TABLES`]) of the db in `container`, but those in
    /// `skip` (`db.table`).
    pub async fn checksums(
        &self,
        container: &str,
        skip: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, String>, ReleaseError> {
        let tables: Vec<String> = self
            .sql(container, TABLES)
            .await?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .filter(|l| !skip.contains(&l.replace('`', "")))
            .map(str::to_string)
            .collect();
        if tables.is_empty() {
            return Ok(BTreeMap::new());
        }
        let out = self
            .sql(container, &format!("CHECKSUM TABLE {}", tables.join(", ")))
            .await?;
        Ok(parse_checksums(&out))
    }
}

/// The settings in force, for messages.
pub fn describe(o: &OnlineConfig) -> String {
    format!(
        "max_rounds {}, freeze_below {}",
        o.max_rounds,
        crate::release::human_bytes(o.freeze_below)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_dump_position() {
        let head = "-- MariaDB dump 10.19\n--\n-- Position to start replication or point-in-time recovery from\n--\n\n-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000002', MASTER_LOG_POS=342;\n\nCREATE DATABASE";
        assert_eq!(
            dump_position(head),
            Some(Position {
                file: "mysql-bin.000002".into(),
                pos: 342
            })
        );
        assert_eq!(dump_position("-- MariaDB dump\nCREATE TABLE t"), None);
        assert_eq!(
            parse_status("mysql-bin.000003\t1234\t\t\n").map(|p| p.to_string()),
            Some("mysql-bin.000003:1234".into())
        );
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn reads_where_a_delta_ends() {
        let tail = "#261202  7:24:57 server id 1  end_log_pos 1377 CRC32 0x4 \tWrite_rows: table id 22\nBINLOG '\nAAA\n'/*!*/;\n# at 1377\n#261202  7:24:57 server id 1  end_log_pos 1408 CRC32 0xf \tXid = 8\nCOMMIT/*!*/;\nDELIMITER ;\n# End of log file\n";
        assert_eq!(last_end_pos(tail), Some(1408));
        assert_eq!(last_end_pos("DELIMITER ;\n"), None);
    }

    #[test]
    fn picks_the_files_between_two_positions() {
        let logs = "mysql-bin.000001\t100\nmysql-bin.000002\t200\nmysql-bin.000003\t300\n";
        assert_eq!(
            files_between(logs, "mysql-bin.000002", "mysql-bin.000003"),
            ["mysql-bin.000002", "mysql-bin.000003"]
        );
        assert_eq!(
            files_between(logs, "mysql-bin.000003", "mysql-bin.000003").len(),
            1
        );
    }

    #[test]
    fn names_the_tables_a_delta_touches() {
        let rows = "# at 611\n#261202  7:24:57 server id 1  end_log_pos 653 CRC32 0x5 \tGTID 0-1-3 trans\nSTART TRANSACTION\n#261202  7:24:57 server id 1  end_log_pos 753 CRC32 0x4 \tTable_map: `wiki`.`w` mapped to number 18\nBINLOG '\nAAAA\n'/*!*/;\n#261202 server id 1 \tGTID 0-1-4 cid=9 trans\n#261202 x \tTable_map: `wiki`.`pages` mapped to number 19\nCOMMIT/*!*/;\n";
        assert_eq!(
            touched(rows).map(|t| t.into_iter().collect::<Vec<_>>()),
            Some(vec!["wiki.pages".to_string(), "wiki.w".to_string()])
        );
        let ddl = "#261202  7:24:57 server id 1  end_log_pos 1086 CRC32 0x9 \tGTID 0-1-5 ddl\n#261202 x \tQuery\tthread_id=5\talter table wiki.w add column b int\n";
        assert_eq!(touched(ddl), None);
        assert_eq!(
            touched("DELIMITER /*!*/;\n# at 4\n").map(|t| t.len()),
            Some(0)
        );
    }

    #[test]
    fn compares_checksums() {
        let a = parse_checksums("wiki.pages\t123\nwiki.w\t7\n");
        let mut b = a.clone();
        assert!(differences(&a, &b, 5).is_empty());
        b.insert("wiki.w".into(), "8".into());
        b.insert("wiki.x".into(), "1".into());
        let d = differences(&a, &b, 5);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("wiki.w: checksum 7 on the old side, 8 on the new"));
    }
}
