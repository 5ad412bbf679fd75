//! Checkpoints against real chains, each test on SQLite and on Postgres: a clean chain verifies; a chain
//! rewritten with every hash recomputed, a cut tail, and forged checkpoints are caught and named.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::verify::{verify, Report};
use super::{sink, CheckpointConfig, Checkpointer, Problem, Signer};
use crate::clock::ManualClock;
use crate::domain::audit::{EventBody, EventKind};
use crate::domain::session::{Session, ToolScope};
use crate::store::testing::TestDb;
use crate::store::Store;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Generates `sqlite::<name>` and `postgres::<name>` for each test `<name>(&TestDb)`.
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    let db = crate::store::testing::TestDb::new(crate::store::Backend::Sqlite).await?;
                    super::$name(&db).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    let db = crate::store::testing::TestDb::new(crate::store::Backend::Postgres).await?;
                    super::$name(&db).await
                }
            )+
        }
    };
}

on_both_backends!(
    a_clean_chain_verifies,
    a_rewritten_chain_passes_the_walk_but_not_the_checkpoints,
    a_truncated_tail_is_caught_even_after_new_events,
    forged_checkpoints_are_caught,
    a_missing_file_is_reported_only_when_there_are_events,
    the_checkpointer_signs_every_n_events_and_at_stop,
    the_checkpointer_signs_after_the_interval_only_when_the_head_moved,
    the_last_commit_of_a_burst_is_signed_within_a_second_and_cutting_it_is_caught,
    the_checkpointer_signs_heads_another_broker_committed,
);

fn signer() -> Signer {
    Signer::from_seed(&[7; 32])
}

/// Appends `n` events (sessions opened).
async fn events(store: &Store, n: usize) -> TestResult {
    for i in 0..n {
        let session = Session {
            id: crate::ids::session_id(),
            agent: format!("agent-{i}"),
            user: Some("alice".into()),
            tenant: None,
            tools: vec![ToolScope::All],
            purpose: "checkpoints".into(),
            created_at: 1_700_000_000_000_000,
            expires_at: 1_700_000_360_000_000,
            max_tool_calls: 5,
            tool_calls_used: 0,
            closed_at: None,
            collections: vec![],
            labels: vec![],
            ancestors: vec![],
        };
        let event = EventBody::for_session(EventKind::SessionOpened, &session, session.created_at);
        store.open_session(&session, event).await?;
    }
    Ok(())
}

/// Signs the current head into `path`, as the checkpointer does.
async fn checkpoint_head(store: &Store, signer: &Signer, path: &Path) -> TestResult {
    let head = store.head().await?.ok_or("empty chain")?;
    sink::append(
        path,
        &signer.sign(head.seq, &head.hash, 1_700_000_000_000_000),
    )?;
    Ok(())
}

fn problems(report: &Report) -> Vec<(u64, Problem)> {
    report
        .findings
        .iter()
        .map(|f| (f.line, f.problem.clone()))
        .collect()
}

async fn a_clean_chain_verifies(db: &TestDb) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checkpoints.jsonl");
    let signer = signer();
    events(db.store(), 3).await?;
    checkpoint_head(db.store(), &signer, &path).await?;
    events(db.store(), 2).await?;
    checkpoint_head(db.store(), &signer, &path).await?;
    events(db.store(), 1).await?;

    let report = verify(db.store(), &path, &signer.public_key()).await?;
    assert!(report.ok(), "{report}");
    assert_eq!(
        (
            report.checkpoints,
            report.valid,
            report.covered_to,
            report.chain_ends
        ),
        (2, 2, 5, 6)
    );
    let text = report.to_string();
    assert!(text.contains("checkpoints ok: 2 checkpoints"), "{text}");
    assert!(text.contains("events 6 to 6 are newer"), "{text}");
    assert!(!report.incomplete_tail);

    // A line being written as verify reads (no newline yet) is left for the next run, not flagged.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"version\":1,\"seq\":6,"))?;
    let report = verify(db.store(), &path, &signer.public_key()).await?;
    assert!(report.ok(), "{report}");
    assert_eq!((report.checkpoints, report.incomplete_tail), (2, true));
    assert!(
        report.to_string().contains("incomplete last line"),
        "{report}"
    );
    // Had the write been cut short by a crash, the next checkpoint starts a line of its own.
    checkpoint_head(db.store(), &signer, &path).await?;
    let report = verify(db.store(), &path, &signer.public_key()).await?;
    assert_eq!(
        (report.checkpoints, report.valid, report.covered_to),
        (4, 3, 6)
    );
    assert!(
        matches!(problems(&report).as_slice(), [(3, Problem::Malformed(_))]),
        "{report}"
    );
    Ok(())
}

async fn a_rewritten_chain_passes_the_walk_but_not_the_checkpoints(db: &TestDb) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checkpoints.jsonl");
    let signer = signer();
    events(db.store(), 3).await?;
    checkpoint_head(db.store(), &signer, &path).await?;
    events(db.store(), 2).await?;
    checkpoint_head(db.store(), &signer, &path).await?;
    let before = db.store().event_hashes(&[3, 5]).await?;

    // Someone with write access changes who opened session 2 and recomputes every hash after it.
    let rewritten = db
        .rewrite_chain(|body| {
            if body.agent == "agent-1" {
                body.agent = "someone-else".into();
            }
        })
        .await?;
    assert_eq!(rewritten, 5);
    let walk = db.store().verify_chain().await?;
    assert!(
        walk.ok,
        "the forger recomputed the chain, so the walk alone passes: {walk:?}"
    );
    assert_eq!(walk.events_checked, 5);

    let report = verify(db.store(), &path, &signer.public_key()).await?;
    assert!(!report.ok(), "{report}");
    assert_eq!(report.problems, 2);
    let after = db.store().event_hashes(&[3, 5]).await?;
    let expected: Vec<(u64, Problem)> = [(1, 0), (2, 1)]
        .into_iter()
        .map(|(line, i)| {
            (
                line,
                Problem::Rewritten {
                    seq: after[i].0,
                    chain: after[i].1.clone(),
                    signed: before[i].1.clone(),
                },
            )
        })
        .collect();
    assert_eq!(problems(&report), expected);
    let text = report.to_string();
    assert!(text.contains("checkpoints FAILED: 2 of 2"), "{text}");
    assert!(
        text.contains("checkpoint on line 1 (event 3") && text.contains("the chain was rewritten"),
        "{text}"
    );
    Ok(())
}

async fn a_truncated_tail_is_caught_even_after_new_events(db: &TestDb) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checkpoints.jsonl");
    let signer = signer();
    events(db.store(), 5).await?;
    checkpoint_head(db.store(), &signer, &path).await?;

    assert_eq!(db.truncate_chain_after(3).await?, 2);
    assert!(
        db.store().verify_chain().await?.ok,
        "a cut tail looks like a shorter history to the walk"
    );
    let report = verify(db.store(), &path, &signer.public_key()).await?;
    assert_eq!(
        problems(&report),
        vec![(
            1,
            Problem::Truncated {
                seq: 5,
                chain_ends: 3
            }
        )]
    );
    assert!(
        report.to_string().contains("its tail was truncated"),
        "{report}"
    );

    // New events after the cut fill the positions again, with other hashes.
    events(db.store(), 3).await?;
    let report = verify(db.store(), &path, &signer.public_key()).await?;
    assert!(!report.ok());
    assert!(
        matches!(
            problems(&report).as_slice(),
            [(1, Problem::Rewritten { seq: 5, .. })]
        ),
        "{report}"
    );
    Ok(())
}

async fn forged_checkpoints_are_caught(db: &TestDb) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checkpoints.jsonl");
    let signer = signer();
    let other = Signer::from_seed(&[9; 32]);
    events(db.store(), 4).await?;
    let head = db.store().head().await?.ok_or("empty chain")?;
    let time = 1_700_000_000_000_000;

    // 1: honest. 2: another key. 3: honest signature, altered hash (as after a rewrite).
    // 4: another key's signature claiming the expected key's id. 5: not a checkpoint at all.
    sink::append(&path, &signer.sign(head.seq, &head.hash, time))?;
    sink::append(&path, &other.sign(head.seq, &head.hash, time))?;
    let mut altered = signer.sign(2, &head.hash, time);
    altered.hash = "ab".repeat(32);
    sink::append(&path, &altered)?;
    let mut claimed = other.sign(head.seq, &head.hash, time);
    claimed.key_id = signer.key_id().to_owned();
    sink::append(&path, &claimed)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"seq\": 1}\n"))?;

    let report = verify(db.store(), &path, &signer.public_key()).await?;
    assert_eq!(
        (report.checkpoints, report.valid, report.problems),
        (5, 1, 4)
    );
    let found = problems(&report);
    assert_eq!(
        found[0],
        (
            2,
            Problem::OtherKey {
                found: other.key_id().to_owned(),
                expected: signer.key_id().to_owned()
            }
        )
    );
    assert_eq!(found[1], (3, Problem::BadSignature));
    assert_eq!(found[2], (4, Problem::BadSignature));
    assert!(matches!(found[3], (5, Problem::Malformed(_))), "{found:?}");

    // Checked against the other key, the honest checkpoint is the odd one out.
    let report = verify(db.store(), &path, &other.public_key()).await?;
    assert_eq!(report.valid, 1);
    assert!(!report.ok());
    Ok(())
}

async fn a_missing_file_is_reported_only_when_there_are_events(db: &TestDb) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nowhere.jsonl");
    let key = signer().public_key();
    let report = verify(db.store(), &path, &key).await?;
    assert!(report.file_missing);
    assert!(report.ok(), "an empty chain needs no checkpoint: {report}");

    events(db.store(), 1).await?;
    let report = verify(db.store(), &path, &key).await?;
    assert!(!report.ok());
    assert!(
        report.to_string().contains("checkpoints MISSING"),
        "{report}"
    );
    // An empty file vouches for nothing either.
    std::fs::write(&path, "")?;
    let report = verify(db.store(), &path, &key).await?;
    assert!(!report.ok());
    assert!(
        report.to_string().contains("holds no checkpoint"),
        "{report}"
    );
    Ok(())
}

/// Waits (bounded) until the file's last checkpoint names event `seq`.
async fn wait_for_checkpoint(path: &Path, seq: i64) -> TestResult {
    wait_for_checkpoint_within(path, seq, Duration::from_secs(20)).await
}

/// Waits at most `bound` until the file's last checkpoint names event `seq`.
async fn wait_for_checkpoint_within(path: &Path, seq: i64, bound: Duration) -> TestResult {
    let start = Instant::now();
    loop {
        if sink::last(path)?.is_some_and(|c| c.seq == seq) {
            return Ok(());
        }
        if start.elapsed() > bound {
            return Err(format!("no checkpoint of event {seq} in `{}`", path.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lines(path: &Path) -> Result<Vec<super::Checkpoint>, Box<dyn std::error::Error + Send + Sync>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<_>, _>>()?)
}

async fn the_checkpointer_signs_every_n_events_and_at_stop(db: &TestDb) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checkpoints.jsonl");
    let cfg = CheckpointConfig {
        every_events: 3,
        every: Duration::from_secs(3600),
        poll_interval: Duration::from_millis(10),
        ..CheckpointConfig::default()
    };
    let clock = ManualClock::default();
    let checkpointer = Checkpointer::start(
        db.store().clone(),
        Arc::new(clock.clone()),
        signer(),
        path.clone(),
        &cfg,
    );
    // No file line while the chain is empty; the first events get a checkpoint at once.
    events(db.store(), 1).await?;
    wait_for_checkpoint(&path, 1).await?;
    events(db.store(), 3).await?;
    wait_for_checkpoint(&path, 4).await?;
    events(db.store(), 1).await?;
    // One event is fewer than `every_events` and the hour has not passed: only the stop writes it.
    checkpointer.stop().await;
    let written = lines(&path)?;
    assert_eq!(written.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 4, 5]);
    assert_eq!(written[2].time, crate::clock::Clock::now_micros(&clock));
    assert!(verify(db.store(), &path, &signer().public_key())
        .await?
        .ok());

    // A restart resumes from the file: the head has not moved, so neither polls nor the stop add a line.
    let again = Checkpointer::start(
        db.store().clone(),
        Arc::new(clock),
        signer(),
        path.clone(),
        &cfg,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    again.stop().await;
    assert_eq!(lines(&path)?.len(), 3);
    Ok(())
}

async fn the_checkpointer_signs_after_the_interval_only_when_the_head_moved(
    db: &TestDb,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checkpoints.jsonl");
    let cfg = CheckpointConfig {
        every_events: 1000,
        every: Duration::from_millis(50),
        poll_interval: Duration::from_millis(10),
        ..CheckpointConfig::default()
    };
    let checkpointer = Checkpointer::start(
        db.store().clone(),
        Arc::new(ManualClock::default()),
        signer(),
        path.clone(),
        &cfg,
    );
    events(db.store(), 2).await?;
    wait_for_checkpoint(&path, 2).await?;
    events(db.store(), 1).await?;
    wait_for_checkpoint(&path, 3).await?;
    // Many intervals pass with the head still: nothing more is signed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    checkpointer.stop().await;
    let seqs: Vec<i64> = lines(&path)?.iter().map(|c| c.seq).collect();
    assert_eq!(seqs.last(), Some(&3));
    assert_eq!(seqs.iter().filter(|s| **s == 3).count(), 1, "{seqs:?}");
    Ok(())
}

async fn the_last_commit_of_a_burst_is_signed_within_a_second_and_cutting_it_is_caught(
    db: &TestDb,
) -> TestResult {
    let cfg = CheckpointConfig::default();
    assert!(
        cfg.every <= Duration::from_secs(1) && cfg.every_events <= 1000,
        "the default window: {cfg:?}"
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checkpoints.jsonl");
    let checkpointer = Checkpointer::start(
        db.store().clone(),
        Arc::new(ManualClock::default()),
        signer(),
        path.clone(),
        &cfg,
    );
    events(db.store(), 1).await?;
    wait_for_checkpoint(&path, 1).await?;
    // A burst far below `every_events`, right after a checkpoint: signed once `every` has passed. The
    // bound is ten times `every`, and half the 10 s a checkpoint used to wait for.
    events(db.store(), 40).await?;
    let head = db.store().head().await?.ok_or("empty chain")?;
    assert_eq!(head.seq, 41);
    wait_for_checkpoint_within(&path, head.seq, Duration::from_secs(5)).await?;
    let last = sink::last(&path)?.ok_or("no checkpoint")?;
    assert_eq!(
        (last.seq, last.hash.as_str()),
        (head.seq, head.hash.as_str())
    );
    checkpointer.stop().await;
    assert_eq!(
        lines(&path)?.len(),
        2,
        "the burst is one checkpoint, and the stop adds none"
    );

    // Cutting only the last commit is caught.
    assert_eq!(db.truncate_chain_after(head.seq - 1).await?, 1);
    let report = verify(db.store(), &path, &signer().public_key()).await?;
    assert_eq!(
        problems(&report),
        vec![(
            2,
            Problem::Truncated {
                seq: head.seq,
                chain_ends: head.seq - 1
            }
        )]
    );
    Ok(())
}

async fn the_checkpointer_signs_heads_another_broker_committed(db: &TestDb) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("checkpoints.jsonl");
    let cfg = CheckpointConfig {
        poll_interval: Duration::from_millis(20),
        ..CheckpointConfig::default()
    };
    let checkpointer = Checkpointer::start(
        db.store().clone(),
        Arc::new(ManualClock::default()),
        signer(),
        path.clone(),
        &cfg,
    );
    // Another broker's writer commits; this broker's writer publishes nothing, so the poll finds it.
    let other = db.connect_another(db.config().clone()).await?;
    events(&other, 3).await?;
    wait_for_checkpoint(&path, 3).await?;
    events(db.store(), 1).await?;
    events(&other, 2).await?;
    wait_for_checkpoint(&path, 6).await?;
    checkpointer.stop().await;
    assert!(verify(db.store(), &path, &signer().public_key())
        .await?
        .ok());
    Ok(())
}
