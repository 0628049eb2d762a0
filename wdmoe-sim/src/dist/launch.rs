//! Starting the ranks of a distributed run: one child process per rank (the
//! same program, rank and world in its environment), watched until all end.
//! A rank that fails (non-zero exit, or a signal) stops the run: the others
//! get `grace` to notice (their NCCL waits time out or see the abort) and
//! are then killed; the error names every rank's end. No hang: an overall
//! `timeout` kills everything too.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Environment variable: this process's rank (set for the children).
pub const ENV_RANK: &str = "WDMOE_DIST_RANK";
/// Environment variable: the number of ranks.
pub const ENV_WORLD: &str = "WDMOE_DIST_WORLD";
/// Environment variable: the file through which rank 0 hands the NCCL unique
/// id to the others (written atomically: a temporary name, then renamed).
pub const ENV_ID_FILE: &str = "WDMOE_DIST_ID_FILE";

/// How to start the ranks.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The program each rank runs (normally this binary).
    pub program: PathBuf,
    /// Its arguments (the same for every rank).
    pub args: Vec<String>,
    /// Ranks (child processes).
    pub world: usize,
    /// Extra environment of every child (`NCCL_NVLS_ENABLE=0` is always set).
    pub env: Vec<(String, String)>,
    /// After a rank fails, how long the others may take to stop by themselves.
    pub grace: Duration,
    /// The longest the whole run may take (None: no limit).
    pub timeout: Option<Duration>,
}

/// How one rank ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RankEnd {
    /// Exited with this status.
    Exited(ExitStatus),
    /// Killed by the launcher (after another rank failed, or the timeout).
    Killed,
}

impl fmt::Display for RankEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankEnd::Exited(s) if s.success() => f.write_str("finished"),
            RankEnd::Exited(s) => match s.code() {
                Some(c) => write!(f, "failed with exit code {c}"),
                None => write!(f, "ended by a signal ({s})"),
            },
            RankEnd::Killed => f.write_str("stopped by the launcher"),
        }
    }
}

/// Why a run failed.
#[derive(Debug)]
pub enum LaunchError {
    /// Bad spec (no ranks), or the temporary folder could not be made.
    Setup(String),
    /// A rank's process could not start.
    Spawn {
        /// The rank.
        rank: usize,
        /// The program.
        program: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A rank failed (the first to fail is named first), or the run timed out.
    Failed {
        /// What happened first.
        cause: String,
        /// Every rank's end, by rank.
        ends: Vec<RankEnd>,
    },
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Setup(m) => write!(f, "dist launcher: {m}"),
            LaunchError::Spawn {
                rank,
                program,
                error,
            } => write!(
                f,
                "dist launcher: could not start rank {rank} ({}): {error}",
                program.display()
            ),
            LaunchError::Failed { cause, ends } => {
                write!(f, "distributed run failed: {cause}")?;
                for (r, e) in ends.iter().enumerate() {
                    write!(f, "\n  rank {r}: {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LaunchError {}

/// A clear error when `requested` ranks need more GPUs than are `visible`
/// (one GPU per rank, rank r on GPU r).
pub fn check_gpus(requested: usize, visible: usize) -> Result<(), String> {
    if requested < 2 {
        return Err(format!(
            "--gpus {requested}: a distributed run needs at least 2 (the base station and a device)"
        ));
    }
    if requested > visible {
        return Err(format!(
            "--gpus {requested}, but {visible} CUDA GPU(s) are visible (one process per GPU; \
             CUDA_VISIBLE_DEVICES may hide some)"
        ));
    }
    Ok(())
}

/// A fresh folder for the run's id file, removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> Result<RunDir, LaunchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("wdmoe-dist-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&p)
            .map_err(|e| LaunchError::Setup(format!("creating {}: {e}", p.display())))?;
        Ok(RunDir(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `spec.world` children (rank r with `WDMOE_DIST_RANK=r`,
/// `WDMOE_DIST_WORLD`, `WDMOE_DIST_ID_FILE`, `NCCL_NVLS_ENABLE=0`) and
/// waits for all; Ok only if every rank succeeds.
pub fn launch(spec: &LaunchSpec) -> Result<(), LaunchError> {
    if spec.world == 0 {
        return Err(LaunchError::Setup("no ranks to start".into()));
    }
    let dir = RunDir::new()?;
    let id_file = dir.path().join("nccl-id");
    let mut children: Vec<Child> = Vec::with_capacity(spec.world);
    for rank in 0..spec.world {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("NCCL_NVLS_ENABLE", "0")
            .env(ENV_RANK, rank.to_string())
            .env(ENV_WORLD, spec.world.to_string())
            .env(ENV_ID_FILE, &id_file);
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(error) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(LaunchError::Spawn {
                    rank,
                    program: spec.program.clone(),
                    error,
                });
            }
        }
    }
    watch(children, spec.grace, spec.timeout)
}

/// Waits for every child; see [`launch`].
fn watch(
    mut children: Vec<Child>,
    grace: Duration,
    timeout: Option<Duration>,
) -> Result<(), LaunchError> {
    let start = Instant::now();
    let mut ends: Vec<Option<RankEnd>> = vec![None; children.len()];
    let mut failure: Option<(String, Instant)> = None;
    loop {
        for (r, c) in children.iter_mut().enumerate() {
            if ends[r].is_some() {
                continue;
            }
            if let Ok(Some(status)) = c.try_wait() {
                if !status.success() && failure.is_none() {
                    let end = RankEnd::Exited(status);
                    failure = Some((format!("rank {r} {end}"), Instant::now()));
                    eprintln!(
                        "wdmoe dist: rank {r} {end}; stopping the other ranks (they get {:.0} s)",
                        grace.as_secs_f64()
                    );
                }
                ends[r] = Some(RankEnd::Exited(status));
            }
        }
        if ends.iter().all(Option::is_some) {
            break;
        }
        let timed_out = timeout.is_some_and(|t| start.elapsed() >= t);
        let grace_over = failure.as_ref().is_some_and(|(_, t)| t.elapsed() >= grace);
        if timed_out || grace_over {
            if timed_out && failure.is_none() {
                failure = Some((
                    format!(
                        "the run took longer than {:.0} s",
                        timeout.unwrap_or_default().as_secs_f64()
                    ),
                    Instant::now(),
                ));
            }
            for (r, c) in children.iter_mut().enumerate() {
                if ends[r].is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                    ends[r] = Some(RankEnd::Killed);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ends: Vec<RankEnd> = ends
        .into_iter()
        .map(|e| e.unwrap_or(RankEnd::Killed))
        .collect();
    match failure {
        None => Ok(()),
        Some((cause, _)) => Err(LaunchError::Failed { cause, ends }),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sh(world: usize, script: &str, grace_s: f64) -> LaunchSpec {
        LaunchSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            world,
            env: vec![("WDMOE_TEST_EXTRA".into(), "x".into())],
            grace: Duration::from_secs_f64(grace_s),
            timeout: Some(Duration::from_secs(60)),
        }
    }

    #[test]
    fn every_rank_gets_its_environment_and_success_is_ok() {
        let script = r#"test "$NCCL_NVLS_ENABLE" = 0 && test "$WDMOE_DIST_WORLD" = 3 &&
            test "$WDMOE_DIST_RANK" -ge 0 && test "$WDMOE_DIST_RANK" -lt 3 &&
            test "$WDMOE_TEST_EXTRA" = x && test -d "$(dirname "$WDMOE_DIST_ID_FILE")""#;
        launch(&sh(3, script, 1.0)).unwrap();
    }

    #[test]
    fn a_failing_rank_stops_the_others_and_is_named() {
        // Rank 1 fails at once; ranks 0 and 2 would run 30 s: the launcher
        // kills them after the grace period.
        let script =
            r#"if [ "$WDMOE_DIST_RANK" = 1 ]; then echo "rank 1: boom" >&2; exit 3; fi; sleep 30"#;
        let t0 = Instant::now();
        let err = launch(&sh(3, script, 0.3)).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        match &err {
            LaunchError::Failed { cause, ends } => {
                assert_eq!(cause, "rank 1 failed with exit code 3");
                assert_eq!(ends[0], RankEnd::Killed);
                assert_eq!(ends[2], RankEnd::Killed);
                assert!(matches!(&ends[1], RankEnd::Exited(s) if s.code() == Some(3)));
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("rank 1 failed with exit code 3"), "{msg}");
        assert!(msg.contains("rank 0: stopped by the launcher"), "{msg}");
    }

    #[test]
    fn ranks_that_stop_by_themselves_within_the_grace_are_reported_as_exited() {
        let script = r#"if [ "$WDMOE_DIST_RANK" = 0 ]; then exit 4; fi; sleep 0.2; exit 5"#;
        let err = launch(&sh(2, script, 20.0)).unwrap_err();
        match err {
            LaunchError::Failed { cause, ends } => {
                assert_eq!(cause, "rank 0 failed with exit code 4");
                assert!(matches!(&ends[1], RankEnd::Exited(s) if s.code() == Some(5)));
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_overall_timeout_kills_a_hung_run() {
        let mut spec = sh(2, "sleep 30", 1.0);
        spec.timeout = Some(Duration::from_millis(300));
        let t0 = Instant::now();
        let err = launch(&spec).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("longer than"), "{err}");
        match err {
            LaunchError::Failed { ends, .. } => assert_eq!(ends, vec![RankEnd::Killed; 2]),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_program_that_cannot_start_is_a_spawn_error() {
        let mut spec = sh(2, "", 1.0);
        spec.program = PathBuf::from("/nonexistent/wdmoe");
        let err = launch(&spec).unwrap_err();
        assert!(matches!(err, LaunchError::Spawn { rank: 0, .. }), "{err}");
    }

    #[test]
    fn gpu_count_is_checked() {
        assert!(check_gpus(2, 2).is_ok());
        assert!(check_gpus(8, 8).is_ok());
        let e = check_gpus(8, 2).unwrap_err();
        assert!(e.contains("--gpus 8, but 2 CUDA GPU(s)"), "{e}");
        assert!(check_gpus(1, 4).unwrap_err().contains("at least 2"));
    }
}
