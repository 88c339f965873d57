//! Every decision made about a release's steps, as pure functions of the journal and of what
//! the daemon reports: the plan a new release walks, the plan `--resume` walks, and what the
//! failure path (and `--abort`) undoes. No I/O here, so all of it is unit-tested; `driver.rs`
//! and `unwind.rs` carry the decisions out. See `LIFECYCLE.md`.

use super::journal::Journal;
use super::step::{Effect, Step};
use super::ReleaseError;
use crate::config::{Color, Flow};

/// A new release walks all six steps (freeze), or the eight of the online flow.
pub fn start_plan(flow: Flow) -> &'static [Step] {
    match flow {
        Flow::Online => &Step::ONLINE,
        Flow::Freeze | Flow::Auto => &Step::ALL,
    }
}

/// What the running database said about the change log the online flow reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binlog {
    /// `@@log_bin`
    pub on: bool,
    /// `@@binlog_format` (ROW, MIXED, STATEMENT)
    pub format: String,
}

impl Binlog {
    /// What the online flow misses, each with what to do; empty when it can run.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.on {
            out.push("the binary log is off (log_bin = OFF): start mariadbd with --log-bin (and --server-id=1), or put log_bin and server_id in its my.cnf".to_string());
        }
        if !self.format.eq_ignore_ascii_case("ROW") {
            out.push(format!("binlog_format is {}, the online flow needs ROW (replaying statements is not exact): start mariadbd with --binlog-format=ROW", self.format));
        }
        out
    }
}

/// Which flow runs and why, in one line for `release --plan` and the release's first lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Freeze or Online (never Auto).
    pub flow: Flow,
    pub why: String,
}

/// Chooses the flow from the config's `flow` and what the active database said (`Err`: it could
/// not be asked, and why). `online` that cannot run is refused (nothing changed); `auto` falls
/// back to freeze and says why.
pub fn choose(asked: Flow, db: Result<&Binlog, &str>) -> Result<Choice, String> {
    let missing = match db {
        Ok(b) => b.missing(),
        Err(e) => vec![format!("the active database could not be asked ({e})")],
    };
    let choice = |flow, why: String| Ok(Choice { flow, why });
    match asked {
        Flow::Freeze => choice(Flow::Freeze, "flow = \"freeze\" (the default): read-only for the backup, restore and migration".into()),
        _ if missing.is_empty() => choice(Flow::Online, format!("flow = \"{asked}\" and the active database has the binary log on in ROW format: copy and catch up while writable, read-only only for the last delta")),
        Flow::Online => Err(format!("flow = \"online\", but {}. Nothing was changed; fix the database, or set flow = \"auto\" (falls back to freeze) or \"freeze\"", missing.join("; and "))),
        Flow::Auto => choice(Flow::Freeze, format!("flow = \"auto\" falls back to freeze: {}", missing.join("; and "))),
    }
}

/// The `Retry-After` (seconds) of the freeze flow's window, from how long the newest backup set
/// took to take (`None`: there is none): the window is that backup again, a restore (about three
/// times as long for a database) and the migration and switch; 60 s when nothing is known,
/// between 30 s and an hour.
pub fn freeze_retry_after_s(last_backup: Option<std::time::Duration>) -> u64 {
    match last_backup {
        None => 60,
        Some(d) => (d.as_secs() * 4 + 10).clamp(30, 3600),
    }
}

/// What `release --resume` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The switch happened: finish step 6 (app read-only off, read-only off, journal removed).
    Finish,
    /// Read-only stayed on and the recorded backup still verifies: a fresh new environment, then
    /// restore that backup into it. No write can have been missed since it was taken.
    FromRestore,
    /// Read-only was lifted, or there is no backup that verifies: all six steps again.
    Restart,
}

impl Resume {
    /// The steps to walk; a restart walks its flow's plan again. A set of the online flow is
    /// complete (dump, every delta, the volumes) once recorded, so it restores like any other.
    pub fn plan(self, flow: Flow) -> &'static [Step] {
        match self {
            Resume::Finish => &[Step::Switch],
            Resume::FromRestore => &[Step::Create, Step::Restore, Step::Migrate, Step::Switch],
            Resume::Restart => start_plan(flow),
        }
    }
}

/// Chooses how to resume from the journal, the daemon's active color and read-only flag for the
/// site, and whether the journal's backup file still verifies against its manifest. The step the
/// journal stopped at does not matter beyond what it recorded: a restore or migration cut off
/// half-way is never continued (its env is made afresh), and a backup is trusted only while
/// read-only has stayed on since it was taken.
pub fn resume(
    j: &Journal,
    active: Color,
    read_only: bool,
    backup_verifies: bool,
) -> Result<Resume, ReleaseError> {
    if active == j.to {
        return Ok(Resume::Finish);
    }
    if active != j.from {
        return Err(ReleaseError::Failed(format!(
            "{} serves {active}, but the journal expected {}; look at `switchyard status`, then `--abort`",
            j.site, j.from
        )));
    }
    let backup_ok = j.backup.is_some() && backup_verifies;
    if read_only && j.did(Effect::ReadOnly) && backup_ok {
        Ok(Resume::FromRestore)
    } else {
        Ok(Resume::Restart)
    }
}

/// One action of the failure path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Empty the new color's pool, so nothing routes to the half-made environment.
    EmptyNewPool,
    /// Stop the half-made environment; it is kept for inspection.
    StopNewEnv,
    /// Run `app_read_only.off` in the active web.
    AppReadOnlyOff,
    /// Turn read-only off at the edge.
    ReadOnlyOff,
}

/// What the failure path (or `--abort`) undoes, given the journal and the active color the
/// daemon reports (`None`: it did not answer). The new environment is left alone when it serves
/// (the switch happened: `rollback` goes back) or when the daemon cannot say whether it does.
pub fn undo(j: &Journal, active: Option<Color>) -> Vec<Undo> {
    let mut plan = Vec::new();
    if active == Some(j.from) && j.did(Effect::NewEnv) {
        plan.extend([Undo::EmptyNewPool, Undo::StopNewEnv]);
    }
    if j.did(Effect::AppReadOnly) {
        plan.push(Undo::AppReadOnlyOff);
    }
    if j.did(Effect::ReadOnly) {
        plan.push(Undo::ReadOnlyOff);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use Undo::*;

    const BLUE: Color = Color::Blue;
    const GREEN: Color = Color::Green;

    /// The journal of a release from blue to green as it is on disk while `at` runs (entered
    /// through `plan`, the way the driver enters steps), with the backup recorded once step 3 ran.
    fn journal_at(plan: &[Step], at: Step, app_read_only: bool) -> Journal {
        let mut j = Journal::new("wiki", "w2l", BLUE, GREEN, Some("1".into()), "2");
        for &s in plan.iter().take_while(|s| **s <= at) {
            if s > Step::Backup && j.backup.is_none() {
                j.backup = Some("b.dump".into());
            }
            j.enter(s, app_read_only);
        }
        j
    }

    /// A crash at `at`, with read-only still on or lifted and the set verifying or not: only
    /// once the set is recorded (after the backup step), with read-only on and the set
    /// verifying, can a fresh env restore it; otherwise the release starts over.
    fn check_resume_at(plan: &[Step], at: Step) {
        let j = journal_at(plan, at, true);
        for read_only in [true, false] {
            for verifies in [true, false] {
                let want = if at > Step::Backup && read_only && verifies {
                    Resume::FromRestore
                } else {
                    Resume::Restart
                };
                assert_eq!(
                    resume(&j, BLUE, read_only, verifies).ok(),
                    Some(want),
                    "crash at {at}, read-only {read_only}, set ok {verifies}"
                );
            }
        }
    }

    /// Resume from a crash at every step of the online flow: before its set is recorded (the
    /// copy, the catch-up, read-only, the last delta) it starts over; after, with read-only still
    /// on and the set verifying, a fresh env restores the whole set (dump and deltas).
    #[test]
    fn resume_from_every_online_step() {
        let online = start_plan(Flow::Online);
        assert_eq!(online, &Step::ONLINE);
        for &at in online {
            check_resume_at(online, at);
            // The online steps before read-only leave only the new env to undo.
            let mut undo_want = vec![EmptyNewPool, StopNewEnv];
            if at >= Step::ReadOnly {
                undo_want.extend([AppReadOnlyOff, ReadOnlyOff]);
            }
            assert_eq!(
                undo(&journal_at(online, at, true), Some(BLUE)),
                undo_want,
                "undo at {at}"
            );
            assert_eq!(
                resume(&journal_at(online, at, false), GREEN, true, false).ok(),
                Some(Resume::Finish)
            );
        }
        assert_eq!(Resume::Restart.plan(Flow::Online), &Step::ONLINE);
        assert_eq!(
            Resume::FromRestore.plan(Flow::Online),
            &[Step::Create, Step::Restore, Step::Migrate, Step::Switch]
        );
    }

    #[test]
    fn the_flow_is_chosen_from_the_config_and_the_database() {
        let row = Binlog {
            on: true,
            format: "ROW".into(),
        };
        let mixed = Binlog {
            on: true,
            format: "MIXED".into(),
        };
        let off = Binlog {
            on: false,
            format: "ROW".into(),
        };
        let flow = |asked, db| choose(asked, db).map(|c| c.flow);
        assert_eq!(flow(Flow::Freeze, Ok(&row)), Ok(Flow::Freeze));
        assert_eq!(flow(Flow::Online, Ok(&row)), Ok(Flow::Online));
        assert_eq!(flow(Flow::Auto, Ok(&row)), Ok(Flow::Online));
        assert_eq!(flow(Flow::Auto, Ok(&mixed)), Ok(Flow::Freeze));
        assert_eq!(flow(Flow::Auto, Err("no such container")), Ok(Flow::Freeze));
        let e = choose(Flow::Online, Ok(&off)).err().unwrap_or_default();
        assert!(
            e.contains("log_bin = OFF") && e.contains("Nothing was changed"),
            "{e}"
        );
        let e = choose(Flow::Online, Ok(&mixed)).err().unwrap_or_default();
        assert!(e.contains("binlog_format is MIXED"), "{e}");
        let why = choose(Flow::Auto, Ok(&off))
            .map(|c| c.why)
            .unwrap_or_default();
        assert!(
            why.contains("falls back to freeze") && why.contains("--log-bin"),
            "{why}"
        );
    }

    #[test]
    fn the_freeze_window_is_guessed_from_the_last_backup() {
        use std::time::Duration;
        assert_eq!(freeze_retry_after_s(None), 60);
        assert_eq!(freeze_retry_after_s(Some(Duration::from_secs(1))), 30);
        assert_eq!(freeze_retry_after_s(Some(Duration::from_secs(35))), 150);
        assert_eq!(freeze_retry_after_s(Some(Duration::from_secs(5000))), 3600);
    }

    #[test]
    fn steps_are_ordered_and_named() {
        assert_eq!(
            Step::ALL.iter().map(|s| s.number()).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(Step::Restore.to_string(), "4/6 restore");
        assert_eq!(Step::Backup.to_string(), "3/6 backup");
        assert_eq!(
            serde_json::to_string(&Step::ReadOnly).ok().as_deref(),
            Some("\"read-only\"")
        );
    }

    #[test]
    fn a_release_walks_the_six_steps_creating_first() {
        assert_eq!(start_plan(Flow::Freeze), &Step::ALL);
        assert_eq!(start_plan(Flow::Freeze)[0], Step::Create);
        assert_eq!(start_plan(Flow::Freeze)[2], Step::Backup);
    }

    #[test]
    fn entering_a_step_records_what_it_may_leave_behind() {
        let j = journal_at(start_plan(Flow::Freeze), Step::Create, true);
        assert_eq!(j.step, Step::Create);
        assert!(j.did(Effect::NewEnv) && !j.did(Effect::ReadOnly));
        let j = journal_at(start_plan(Flow::Freeze), Step::ReadOnly, true);
        assert!(j.did(Effect::ReadOnly) && j.did(Effect::AppReadOnly));
        let j = journal_at(start_plan(Flow::Freeze), Step::Switch, false);
        assert!(j.did(Effect::ReadOnly) && !j.did(Effect::AppReadOnly));
    }

    /// Resume from a crash at every step, with read-only still on or lifted, and the backup
    /// verifying or not.
    #[test]
    fn resume_from_every_step() {
        for at in Step::ALL {
            check_resume_at(start_plan(Flow::Freeze), at);
        }
        assert_eq!(Resume::Restart.plan(Flow::Freeze), &Step::ALL);
        assert_eq!(
            Resume::FromRestore.plan(Flow::Freeze),
            &[Step::Create, Step::Restore, Step::Migrate, Step::Switch]
        );
    }

    /// A backup is trusted only if this release turned read-only on: read-only that someone else
    /// turned on does not say that no write came in before it.
    #[test]
    fn resume_needs_read_only_of_its_own() {
        let mut j = journal_at(start_plan(Flow::Freeze), Step::Restore, true);
        j.effects.remove(&Effect::ReadOnly);
        assert_eq!(resume(&j, BLUE, true, true).ok(), Some(Resume::Restart));
    }

    /// A resumed release that crashes again resumes the same way.
    #[test]
    fn resume_of_a_resumed_release() {
        let first = journal_at(start_plan(Flow::Freeze), Step::Migrate, true);
        let mut j = first.clone();
        for &s in Resume::FromRestore.plan(Flow::Freeze) {
            j.enter(s, true);
            assert_eq!(
                resume(&j, BLUE, true, true).ok(),
                Some(Resume::FromRestore),
                "at {s}"
            );
        }
    }

    #[test]
    fn resume_after_the_switch_finishes() {
        for at in Step::ALL {
            for read_only in [true, false] {
                let j = journal_at(start_plan(Flow::Freeze), at, true);
                assert_eq!(
                    resume(&j, GREEN, read_only, false).ok(),
                    Some(Resume::Finish)
                );
            }
        }
        assert_eq!(Resume::Finish.plan(Flow::Freeze), &[Step::Switch]);
    }

    #[test]
    fn resume_refuses_a_journal_that_does_not_match() {
        let mut j = journal_at(start_plan(Flow::Freeze), Step::Backup, true);
        j.to = BLUE;
        assert!(resume(&j, GREEN, true, true).is_err());
    }

    /// The failure path (and `--abort` after a crash) at every step: what it undoes.
    #[test]
    fn undo_at_every_step() {
        let env = [EmptyNewPool, StopNewEnv];
        for app in [true, false] {
            for at in Step::ALL {
                let j = journal_at(start_plan(Flow::Freeze), at, app);
                let mut want = env.to_vec();
                if at >= Step::ReadOnly {
                    if app {
                        want.push(AppReadOnlyOff);
                    }
                    want.push(ReadOnlyOff);
                }
                assert_eq!(
                    undo(&j, Some(BLUE)),
                    want,
                    "failed at {at}, app_read_only {app}"
                );
            }
        }
    }

    /// Once the switch happened the new env serves: it is left alone, read-only still goes.
    #[test]
    fn undo_after_the_switch_keeps_the_new_env() {
        let j = journal_at(start_plan(Flow::Freeze), Step::Switch, true);
        assert_eq!(undo(&j, Some(GREEN)), vec![AppReadOnlyOff, ReadOnlyOff]);
    }

    /// When the daemon does not answer, nobody can tell which env serves: leave both alone.
    #[test]
    fn undo_without_the_daemon_keeps_the_envs() {
        let j = journal_at(start_plan(Flow::Freeze), Step::Restore, false);
        assert_eq!(undo(&j, None), vec![ReadOnlyOff]);
        let j = journal_at(start_plan(Flow::Freeze), Step::Create, false);
        assert_eq!(undo(&j, None), vec![]);
    }

    /// A journal written before the release started (no step entered) undoes nothing.
    #[test]
    fn undo_before_any_step() {
        let j = Journal::new("wiki", "w2l", BLUE, GREEN, None, "2");
        assert_eq!(undo(&j, Some(BLUE)), vec![]);
    }

    /// Resumed from the restore, the effects of the first attempt still count.
    #[test]
    fn undo_of_a_resumed_release() {
        let mut j = journal_at(start_plan(Flow::Freeze), Step::Migrate, true);
        j.enter(Step::Create, true);
        assert_eq!(
            undo(&j, Some(BLUE)),
            vec![EmptyNewPool, StopNewEnv, AppReadOnlyOff, ReadOnlyOff]
        );
    }
}
