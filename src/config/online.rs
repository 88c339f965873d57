//! The commands of the online flow (`[site.release.online]`, kind mariadb), built from its
//! settings: SQL through the db image's client, a delta applied through it, the binlog read with
//! the image's binlog tool. All of them run in a db container (`docker exec`); a password comes
//! from that container's own environment (`password_env`), never from switchyard's argv.

use super::OnlineConfig;

impl OnlineConfig {
    /// The login options of the client (`-u USER` when a user is set).
    fn login(&self) -> Vec<String> {
        match &self.user {
            Some(u) => vec!["-u".into(), u.clone()],
            None => Vec::new(),
        }
    }

    /// `cmd` with the password of `password_env` handed over in MYSQL_PWD, read inside the
    /// container (so it is in no command line).
    fn with_password(&self, cmd: Vec<String>) -> Vec<String> {
        let Some(var) = &self.password_env else {
            return cmd;
        };
        let mut out = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("MYSQL_PWD=\"${var}\" exec \"$@\""),
            "sh".to_string(),
        ];
        out.extend(cmd);
        out
    }

    /// One query, answered tab-separated without column names.
    pub fn sql(&self, query: &str) -> Vec<String> {
        let mut cmd = vec![self.client.clone()];
        cmd.extend(self.login());
        cmd.extend(["-N".into(), "-B".into(), "-e".into(), query.into()]);
        self.with_password(cmd)
    }

    /// The client reading a delta on stdin (binary mode: a binlog's statements may hold any byte).
    pub fn apply(&self) -> Vec<String> {
        let mut cmd = vec![self.client.clone()];
        cmd.extend(self.login());
        cmd.push("--binary-mode".into());
        self.with_password(cmd)
    }

    /// The full copy, with the password handed over like the client's.
    pub fn dump_cmd(&self) -> Vec<String> {
        self.with_password(self.dump.clone())
    }

    /// The binlog from `start` in the first of `files` to `stop` in the last (paths in the db
    /// container), as SQL on stdout.
    pub fn binlog(&self, files: &[String], start: u64, stop: u64) -> Vec<String> {
        let mut cmd = vec![
            self.binlog_tool.clone(),
            format!("--start-position={start}"),
            format!("--stop-position={stop}"),
        ];
        cmd.extend(files.iter().cloned());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(user: Option<&str>, pw: Option<&str>) -> OnlineConfig {
        OnlineConfig {
            user: user.map(str::to_string),
            password_env: pw.map(str::to_string),
            max_rounds: 10,
            freeze_below: 1 << 20,
            dump: vec!["mariadb-dump".into(), "--all-databases".into()],
            client: "mariadb".into(),
            binlog_tool: "mariadb-binlog".into(),
            compare_all: false,
        }
    }

    #[test]
    fn commands_carry_the_login_and_never_the_password() {
        assert_eq!(
            cfg(None, None).sql("select 1"),
            ["mariadb", "-N", "-B", "-e", "select 1"]
        );
        let c = cfg(Some("backup"), Some("DB_PW")).apply();
        assert_eq!(
            c,
            [
                "sh",
                "-c",
                "MYSQL_PWD=\"$DB_PW\" exec \"$@\"",
                "sh",
                "mariadb",
                "-u",
                "backup",
                "--binary-mode"
            ]
        );
        assert_eq!(
            cfg(None, None).binlog(&["/v/b.1".into(), "/v/b.2".into()], 4, 99),
            [
                "mariadb-binlog",
                "--start-position=4",
                "--stop-position=99",
                "/v/b.1",
                "/v/b.2"
            ]
        );
    }
}
