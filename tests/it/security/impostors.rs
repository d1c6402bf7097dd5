//! Impostor runners: a runner cannot report a task it was not assigned, or
//! crash the dispatcher with absurd numbers for one it was.

use super::*;

#[test]
fn a_runner_cannot_report_someone_else_s_task() {
    let tmp = tempfile::tempdir().unwrap();
    let gated = Gated::new(tmp.path());
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &[], &gated.repo_arg(), &gated.commit).unwrap();
    gated.wait_started(&dispatcher.addr, &id, "r1");
    let task_id = TaskId::new(id.parse().unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    runtime.block_on(async {
        let mut mallory = FakeRunner::dial(&dispatcher.addr, "mallory").await.unwrap();
        // Claiming the attempt at registration: told to forget it.
        mallory.send(register(vec![Held { task_id, attempt: 1 }])).await.unwrap();
        let DispatcherToRunner::Registered(registered) = mallory.next(PATIENCE).await.unwrap() else {
            panic!("not registered")
        };
        assert!(registered.resume.is_empty(), "{registered:?}");
        assert_eq!(
            registered.forget.iter().map(|forget| (forget.task_id, forget.attempt)).collect::<Vec<_>>(),
            [(task_id, 1)]
        );
        // Output is dropped without an answer; results are refused.
        mallory
            .send(RunnerToDispatcher::Output(protocol::message::Output {
                task_id,
                attempt: 1,
                offset: 0,
                data: b"INJECTED BY MALLORY\n".to_vec(),
            }))
            .await
            .unwrap();
        for (claimed, attempt) in [(task_id, 1), (task_id, 2), (task_id, 0), (TaskId::new(999).unwrap(), 1)] {
            mallory.send(RunnerToDispatcher::Result(passed(claimed, attempt))).await.unwrap();
            match mallory.next(PATIENCE).await.unwrap() {
                DispatcherToRunner::ResultAck(ResultAck { task_id, attempt: acked, accepted, reason }) => {
                    assert_eq!((task_id, acked), (claimed, attempt));
                    assert!(!accepted, "mallory's result for {claimed} attempt {attempt} was accepted");
                    assert!(reason.is_some_and(|reason| reason.contains("not current")));
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    });
    let task = show(&dispatcher.addr, &id).unwrap();
    assert_eq!(task["state"], "running", "{task:#}");
    assert_eq!((task["runner"].as_str(), task["attempts"].as_i64()), (Some("r1"), Some(1)), "{task:#}");

    gated.open();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!((task["runner"].as_str(), task["attempts"].as_i64()), (Some("r1"), Some(1)), "{task:#}");
    let log = crate::support::stored_log(&dispatcher.data_dir, &id);
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("finished") && !log.contains("INJECTED"), "{log}");

    // Once it is final, a "failed" result from another runner changes nothing.
    runtime.block_on(async {
        let mut mallory = FakeRunner::dial(&dispatcher.addr, "mallory").await.unwrap();
        mallory.send(register(Vec::new())).await.unwrap();
        mallory.next(PATIENCE).await.unwrap();
        let mut failed = passed(task_id, 1);
        failed.outcome = Outcome::Failed;
        failed.exit_code = Some(1);
        mallory.send(RunnerToDispatcher::Result(failed)).await.unwrap();
        let answer = mallory.next(PATIENCE).await.unwrap();
        assert!(
            matches!(answer, DispatcherToRunner::ResultAck(ResultAck { accepted: false, .. })),
            "{answer:?}"
        );
    });
    let after = show(&dispatcher.addr, &id).unwrap();
    assert_eq!((&after["state"], &after["exit_code"]), (&task["state"], &task["exit_code"]), "{after:#}");
    assert_still_serving(&dispatcher.addr, &[], &id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn an_assigned_runner_cannot_crash_the_dispatcher_with_absurd_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    // Only mallory has the label, so mallory is assigned the task.
    let args = ["submit", "--label", "mallory", WITNESS_REPO, &"f".repeat(40), "--json"];
    let id = support::baton_json(&dispatcher.addr, &args[..args.len() - 1])["id"].to_string();
    let task_id = TaskId::new(id.parse().unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    runtime.block_on(async {
        let mut mallory = FakeRunner::dial(&dispatcher.addr, "mallory").await.unwrap();
        let RunnerToDispatcher::Register(mut register) = register(Vec::new()) else { unreachable!() };
        register.labels = vec![protocol::Label::new("mallory").unwrap()];
        mallory.send(RunnerToDispatcher::Register(register)).await.unwrap();
        assert!(matches!(mallory.next(PATIENCE).await.unwrap(), DispatcherToRunner::Registered(_)));
        let DispatcherToRunner::Assign(assign) = mallory.next(PATIENCE).await.unwrap() else {
            panic!("not assigned")
        };
        assert_eq!(assign.task_id, task_id);
        // Offsets whose end overflows a u64, then a result whose every
        // number is at its limit.
        for offset in [u64::MAX - 3, u64::MAX, 0] {
            let output =
                protocol::message::Output { task_id, attempt: 1, offset, data: b"0123456789".to_vec() };
            mallory.send(RunnerToDispatcher::Output(output)).await.unwrap();
        }
        let result = TaskResult {
            task_id,
            attempt: 1,
            outcome: Outcome::Failed,
            exit_code: Some(i32::MIN),
            duration_ms: u64::MAX,
            summary: Some(protocol::message::Summary {
                passed: u32::MAX,
                failed: u32::MAX,
                skipped: u32::MAX,
            }),
            reason: Some("a\0b\nstate: passed\n".repeat(1000)),
            // What it sent: a result claiming absent output is held until
            // the output is stored (issue 12), so it would never end.
            output_len: 10,
            tag: None,
            failed_step: Some("\0".repeat(1000)),
            tests: vec![],
        };
        mallory.send(RunnerToDispatcher::Result(result)).await.unwrap();
        let answer = mallory.next(PATIENCE).await.unwrap();
        // Output is part of the result (issue 12): a result claiming more
        // output than is stored is held, and the output asked for again.
        assert!(
            matches!(
                answer,
                DispatcherToRunner::ResultAck(ResultAck { accepted: true, .. })
                    | DispatcherToRunner::Resend(_)
            ),
            "{answer:?}"
        );
    });
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!((task["state"].as_str(), task["exit_code"].as_i64()), (Some("failed"), Some(i32::MIN.into())));
    // The reason is kept printable and bounded: no control character but a
    // newline or a tab reaches a terminal through `baton show`.
    let reason = task["reason"].as_str().unwrap();
    let unprintable = |c: char| c.is_control() && c != '\n' && c != '\t';
    assert!(reason.len() <= 4096 && !reason.chars().any(unprintable), "{reason:?}");
    assert!(reason.starts_with("a\u{fffd}b\nstate: passed"), "{reason:?}");
    assert_still_serving(&dispatcher.addr, &[], &witness);
}
