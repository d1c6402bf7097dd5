//! Property tests of decoding (issue 6): whatever bytes arrive, decoding
//! returns a value or an error and never panics, and every valid message
//! survives an encode and decode unchanged.
//!
//! Three sources of input, each fed to `codec::decode` as every message enum
//! and every handshake type: arbitrary bytes, valid messages of every enum
//! with bytes flipped, inserted and deleted, and arbitrary byte streams cut
//! into frames by the frame codec. The case count is kept modest so the suite
//! stays fast; `fuzz/` covers the same ground for longer runs.

use bytes::BytesMut;
use proptest::prelude::*;
use protocol::codec::{decode, encode, frame_codec};
use protocol::handshake::{Challenge, DispatcherHandshake, Hello, Proof, Reject, Role, UserProof, Welcome};
use protocol::message::{
    Abort, Accepted, Assign, ClientToDispatcher, Deploy, DeployStep, DispatcherToClient,
    DispatcherToObserver, DispatcherToRunner, Forget, Held, HostFacts, Job, LogRequest, ManualSubmit,
    ObserverToDispatcher, Outcome, Output, Ping, Pong, Refused, Register, Registered, ReleaseInfo,
    ReleaseQuery, ResultAck, Resume, RollbackRequest, RunnerInfo, RunnerState, RunnerToDispatcher, Selector,
    StatusReport, Submit, Summary, TaskInfo, TaskQuery, TaskResult,
};
use protocol::{
    Branch, CommitId, CommitPrefix, Label, Name, ReleaseKind, ReleaseState, RepoUrl, TaskId, TaskState,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::Decoder;

/// Cases per property: enough to reach every variant many times over, few
/// enough that the whole file runs in a couple of seconds.
const CASES: u32 = 512;

/// Every type a peer decodes from the wire, as one value.
#[derive(Clone, Debug, PartialEq)]
enum Wire {
    Hello(Hello),
    DispatcherHandshake(DispatcherHandshake),
    Proof(Proof),
    ObserverToDispatcher(ObserverToDispatcher),
    DispatcherToObserver(DispatcherToObserver),
    RunnerToDispatcher(RunnerToDispatcher),
    DispatcherToRunner(DispatcherToRunner),
    ClientToDispatcher(ClientToDispatcher),
    DispatcherToClient(DispatcherToClient),
}

impl Wire {
    fn encode(&self) -> Vec<u8> {
        let encoded = match self {
            Wire::Hello(message) => encode(message),
            Wire::DispatcherHandshake(message) => encode(message),
            Wire::Proof(message) => encode(message),
            Wire::ObserverToDispatcher(message) => encode(message),
            Wire::DispatcherToObserver(message) => encode(message),
            Wire::RunnerToDispatcher(message) => encode(message),
            Wire::DispatcherToRunner(message) => encode(message),
            Wire::ClientToDispatcher(message) => encode(message),
            Wire::DispatcherToClient(message) => encode(message),
        };
        encoded.expect("generated messages are far below the frame limit")
    }

    /// Decodes `payload` as the same type as `self`.
    fn decode_like(&self, payload: &[u8]) -> Result<Wire, protocol::Error> {
        Ok(match self {
            Wire::Hello(_) => Wire::Hello(decode(payload)?),
            Wire::DispatcherHandshake(_) => Wire::DispatcherHandshake(decode(payload)?),
            Wire::Proof(_) => Wire::Proof(decode(payload)?),
            Wire::ObserverToDispatcher(_) => Wire::ObserverToDispatcher(decode(payload)?),
            Wire::DispatcherToObserver(_) => Wire::DispatcherToObserver(decode(payload)?),
            Wire::RunnerToDispatcher(_) => Wire::RunnerToDispatcher(decode(payload)?),
            Wire::DispatcherToRunner(_) => Wire::DispatcherToRunner(decode(payload)?),
            Wire::ClientToDispatcher(_) => Wire::ClientToDispatcher(decode(payload)?),
            Wire::DispatcherToClient(_) => Wire::DispatcherToClient(decode(payload)?),
        })
    }
}

/// Decodes `payload` as `T`; when that succeeds, the value must survive a
/// second encode and decode unchanged (what was accepted is well formed).
fn check_as<T>(payload: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = decode::<T>(payload) {
        let again = encode(&value).map_err(|err| TestCaseError::fail(format!("{err}")))?;
        let back: T = decode(&again).map_err(|err| TestCaseError::fail(format!("{err}")))?;
        prop_assert_eq!(back, value);
    }
    Ok(())
}

/// Feeds `payload` to the decoder of every wire type.
fn check_every_type(payload: &[u8]) -> Result<(), TestCaseError> {
    check_as::<Hello>(payload)?;
    check_as::<DispatcherHandshake>(payload)?;
    check_as::<Proof>(payload)?;
    check_as::<ObserverToDispatcher>(payload)?;
    check_as::<DispatcherToObserver>(payload)?;
    check_as::<RunnerToDispatcher>(payload)?;
    check_as::<DispatcherToRunner>(payload)?;
    check_as::<ClientToDispatcher>(payload)?;
    check_as::<DispatcherToClient>(payload)?;
    Ok(())
}

/// One change to an encoded message.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = bytes.len();
        match *mutation {
            Mutation::Flip { at, bit } if len > 0 => bytes[at % len] ^= 1 << bit,
            Mutation::Insert { at, byte } => bytes.insert(at % (len + 1), byte),
            Mutation::Delete { at } if len > 0 => {
                bytes.remove(at % len);
            }
            Mutation::Truncate { at } => bytes.truncate(at % (len + 1)),
            Mutation::Flip { .. } | Mutation::Delete { .. } => {}
        }
    }
}

// ------------------------------------------------------------ strategies

fn task_id() -> impl Strategy<Value = TaskId> {
    prop_oneof![1i64..1000, 1i64..=i64::MAX].prop_map(|id| TaskId::new(id).unwrap())
}

fn commit() -> impl Strategy<Value = CommitId> {
    prop_oneof!["[0-9a-f]{40}", "[0-9a-f]{64}"].prop_map(|id| CommitId::new(id).unwrap())
}

fn commit_prefix() -> impl Strategy<Value = CommitPrefix> {
    "[0-9a-f]{4,64}".prop_map(|prefix| CommitPrefix::new(prefix).unwrap())
}

fn branch() -> impl Strategy<Value = Branch> {
    "[a-z0-9][a-z0-9_-]{0,12}(/[a-z0-9][a-z0-9_-]{0,12}){0,2}".prop_map(|name| Branch::new(name).unwrap())
}

fn repo() -> impl Strategy<Value = RepoUrl> {
    prop_oneof![
        "(/[a-z0-9_-]{1,10}){1,4}(\\.git)?",
        "(https|ssh|git|file)://[a-z0-9][a-z0-9.-]{0,11}(/[a-z0-9_-]{1,10}){1,3}",
        "git@[a-z0-9][a-z0-9.-]{0,11}:[a-z0-9_-]{1,10}/[a-z0-9_-]{1,10}",
    ]
    .prop_map(|url| RepoUrl::new(url).unwrap())
}

fn name() -> impl Strategy<Value = Name> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,20}".prop_map(|name| Name::new(name).unwrap())
}

fn label() -> impl Strategy<Value = Label> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,10}".prop_map(|label| Label::new(label).unwrap())
}

fn labels() -> impl Strategy<Value = Vec<Label>> {
    prop::collection::vec(label(), 0..4)
}

fn state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(TaskState::ALL.to_vec())
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including control characters: free text is not checked.
    ".{0,24}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn summary() -> impl Strategy<Value = Summary> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(passed, failed, skipped)| Summary {
        passed,
        failed,
        skipped,
    })
}

fn host() -> impl Strategy<Value = HostFacts> {
    (text(), text(), any::<u32>()).prop_map(|(os, arch, cpus)| HostFacts { os, arch, cpus })
}

fn accepted() -> impl Strategy<Value = Accepted> {
    (task_id(), any::<bool>()).prop_map(|(task_id, duplicate)| Accepted { task_id, duplicate })
}

fn task_info() -> BoxedStrategy<TaskInfo> {
    let identity = (task_id(), repo(), branch(), commit(), state(), any::<u32>(), prop::option::of(name()));
    let times = (
        any::<Option<i32>>(),
        any::<i64>(),
        any::<Option<i64>>(),
        any::<Option<i64>>(),
        any::<Option<u64>>(),
    );
    let rest = (prop::option::of(summary()), prop::option::of(text()), labels(), text(), text());
    (identity, times, rest)
        .prop_map(
            |(
                (id, repo, branch, commit, state, attempts, runner),
                (exit_code, created_at_ms, started_at_ms, finished_at_ms, duration_ms),
                (summary, reason, labels, trigger, kind),
            )| TaskInfo {
                id,
                repo,
                branch,
                commit,
                state,
                attempts,
                runner,
                exit_code,
                created_at_ms,
                started_at_ms,
                finished_at_ms,
                duration_ms,
                summary,
                reason,
                labels,
                trigger,
                kind,
                flaky: false,
                flaky_tests: vec![],
                culprit: None,
                requested_by: None,
                aborted_by: None,
            },
        )
        .boxed()
}

fn release_info() -> BoxedStrategy<ReleaseInfo> {
    let what = (repo(), any::<u32>(), prop::option::of(branch()), branch(), commit());
    let tasks =
        (prop::option::of(task_id()), prop::option::of(task_id()), any::<i64>(), any::<Option<u32>>());
    let kind = prop::sample::select(ReleaseKind::ALL);
    let state = prop::sample::select(ReleaseState::ALL);
    let how = (kind, any::<Option<u32>>(), state, text());
    (what, tasks, how)
        .prop_map(
            |(
                (repo, version, tag, branch, commit),
                (task_id, deploy_task_id, created_at_ms, previous),
                (kind, rollback_to, state, trigger),
            )| ReleaseInfo {
                repo,
                version,
                tag,
                branch,
                commit,
                task_id,
                deploy_task_id,
                created_at_ms,
                previous,
                kind,
                rollback_to,
                state,
                trigger,
            },
        )
        .boxed()
}

fn runner_info() -> BoxedStrategy<RunnerInfo> {
    let state = prop::sample::select(vec![RunnerState::Idle, RunnerState::Busy, RunnerState::Dead]);
    (
        name(),
        text(),
        labels(),
        state,
        any::<u32>(),
        prop::collection::vec(task_id(), 0..3),
        any::<i64>(),
        host(),
    )
        .prop_map(|(name, address, labels, state, slots, tasks, last_seen_ms, host)| RunnerInfo {
            name,
            address,
            labels,
            state,
            slots,
            tasks,
            last_seen_ms,
            host,
        })
        .boxed()
}

fn observer_to_dispatcher() -> BoxedStrategy<ObserverToDispatcher> {
    (repo(), branch(), commit(), labels(), any::<bool>())
        .prop_map(|(repo, branch, commit, labels, scheduled)| {
            let submit = Submit { repo, branch, commit, labels };
            if scheduled {
                ObserverToDispatcher::SubmitScheduled(submit)
            } else {
                ObserverToDispatcher::Submit(submit)
            }
        })
        .boxed()
}

fn dispatcher_to_observer() -> BoxedStrategy<DispatcherToObserver> {
    prop_oneof![
        accepted().prop_map(DispatcherToObserver::Accepted),
        text().prop_map(|reason| DispatcherToObserver::Refused(Refused { reason })),
    ]
    .boxed()
}

fn runner_to_dispatcher() -> BoxedStrategy<RunnerToDispatcher> {
    let held = (task_id(), any::<u32>()).prop_map(|(task_id, attempt)| Held { task_id, attempt });
    let register = (labels(), any::<u32>(), host(), prop::collection::vec(held, 0..3))
        .prop_map(|(labels, slots, host, held)| Register { labels, slots, host, held });
    let output = (task_id(), any::<u32>(), any::<u64>(), bytes())
        .prop_map(|(task_id, attempt, offset, data)| Output { task_id, attempt, offset, data });
    let outcome = prop::sample::select(vec![
        Outcome::Passed,
        Outcome::Failed,
        Outcome::Error,
        Outcome::Aborted,
        Outcome::Refused,
    ]);
    let result = (
        task_id(),
        any::<u32>(),
        outcome,
        any::<Option<i32>>(),
        any::<u64>(),
        prop::option::of(summary()),
        prop::option::of(text()),
        any::<u64>(),
        prop::option::of(branch()),
        prop::option::of(text()),
    )
        .prop_map(
            |(
                task_id,
                attempt,
                outcome,
                exit_code,
                duration_ms,
                summary,
                reason,
                output_len,
                tag,
                failed_step,
            )| {
                TaskResult {
                    task_id,
                    attempt,
                    outcome,
                    exit_code,
                    duration_ms,
                    summary,
                    reason,
                    output_len,
                    tag,
                    failed_step,
                    tests: vec![],
                }
            },
        );
    prop_oneof![
        register.prop_map(RunnerToDispatcher::Register),
        any::<u64>().prop_map(|seq| RunnerToDispatcher::Pong(Pong { seq })),
        output.prop_map(RunnerToDispatcher::Output),
        result.prop_map(RunnerToDispatcher::Result),
        Just(RunnerToDispatcher::Draining),
    ]
    .boxed()
}

fn forget() -> impl Strategy<Value = Forget> {
    (task_id(), any::<u32>(), text()).prop_map(|(task_id, attempt, reason)| Forget {
        task_id,
        attempt,
        reason,
    })
}

fn dispatcher_to_runner() -> BoxedStrategy<DispatcherToRunner> {
    let resume = (task_id(), any::<u32>(), any::<u64>())
        .prop_map(|(task_id, attempt, output_offset)| Resume { task_id, attempt, output_offset });
    let registered = (prop::collection::vec(resume, 0..3), prop::collection::vec(forget(), 0..3)).prop_map(
        |(resume, forget)| Registered { resume, forget, heartbeat_interval_ms: 1000, heartbeat_misses: 3 },
    );
    let step = (text(), text()).prop_map(|(name, command)| DeployStep { name, command });
    let deploy = (text(), prop::option::of(commit()), prop::collection::vec(step, 0..4)).prop_map(
        |(release, previous_commit, steps)| Job::Deploy(Deploy { release, previous_commit, steps }),
    );
    let job = prop_oneof![Just(Job::Test), deploy];
    let assign = (task_id(), any::<u32>(), repo(), branch(), commit(), job).prop_map(
        |(task_id, attempt, repo, branch, commit, job)| Assign {
            task_id,
            attempt,
            repo,
            branch,
            commit,
            job,
        },
    );
    let ack = (task_id(), any::<u32>(), any::<bool>(), prop::option::of(text()))
        .prop_map(|(task_id, attempt, accepted, reason)| ResultAck { task_id, attempt, accepted, reason });
    prop_oneof![
        registered.prop_map(DispatcherToRunner::Registered),
        any::<u64>().prop_map(|seq| DispatcherToRunner::Ping(Ping { seq })),
        assign.prop_map(DispatcherToRunner::Assign),
        (task_id(), any::<u32>())
            .prop_map(|(task_id, attempt)| DispatcherToRunner::Abort(Abort { task_id, attempt })),
        ack.prop_map(DispatcherToRunner::ResultAck),
        forget().prop_map(DispatcherToRunner::Forget),
    ]
    .boxed()
}

fn client_to_dispatcher() -> BoxedStrategy<ClientToDispatcher> {
    let query = (prop::option::of(repo()), prop::option::of(state()), any::<u32>())
        .prop_map(|(repo, state, limit)| ClientToDispatcher::Tasks(TaskQuery { repo, state, limit }));
    let selector = prop_oneof![task_id().prop_map(Selector::Id), commit_prefix().prop_map(Selector::Commit),];
    let submit = (repo(), branch(), commit(), labels()).prop_map(|(repo, branch, commit, labels)| {
        ClientToDispatcher::Submit(ManualSubmit { repo, branch, commit, labels })
    });
    prop_oneof![
        Just(ClientToDispatcher::Status),
        Just(ClientToDispatcher::Runners),
        query,
        selector.prop_map(ClientToDispatcher::Show),
        submit,
        task_id().prop_map(ClientToDispatcher::Rerun),
        task_id().prop_map(ClientToDispatcher::Abort),
        (task_id(), any::<bool>())
            .prop_map(|(task_id, follow)| ClientToDispatcher::Log(LogRequest { task_id, follow })),
        prop::option::of(repo()).prop_map(|repo| ClientToDispatcher::Releases(ReleaseQuery { repo })),
        (repo(), any::<Option<u32>>())
            .prop_map(|(repo, to)| ClientToDispatcher::Rollback(RollbackRequest { repo, to })),
    ]
    .boxed()
}

fn dispatcher_to_client() -> BoxedStrategy<DispatcherToClient> {
    let counts = prop::collection::vec((state(), any::<u64>()), 0..6);
    let status = (text(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>(), counts).prop_map(
        |(version, uptime_ms, runners_idle, runners_busy, runners_dead, tasks)| {
            DispatcherToClient::Status(StatusReport {
                version,
                uptime_ms,
                runners_idle,
                runners_busy,
                runners_dead,
                tasks,
                data_dir_full: None,
                data_dir_bytes: 0,
            })
        },
    );
    prop_oneof![
        status,
        prop::collection::vec(runner_info(), 0..3).prop_map(DispatcherToClient::Runners),
        prop::collection::vec(task_info(), 0..3).prop_map(DispatcherToClient::Tasks),
        prop::option::of(task_info().prop_map(Box::new)).prop_map(DispatcherToClient::Task),
        accepted().prop_map(DispatcherToClient::Accepted),
        task_info().prop_map(|task| DispatcherToClient::Aborted(Box::new(task))),
        bytes().prop_map(DispatcherToClient::LogChunk),
        task_info().prop_map(|task| DispatcherToClient::LogEnd(Box::new(task))),
        text().prop_map(DispatcherToClient::Error),
        prop::collection::vec(release_info(), 0..3).prop_map(DispatcherToClient::Releases),
        release_info().prop_map(|release| DispatcherToClient::Release(Box::new(release))),
    ]
    .boxed()
}

fn hello() -> BoxedStrategy<Hello> {
    let role = prop::sample::select(vec![Role::Observer, Role::Runner, Role::Client]);
    (any::<u32>(), role, name()).prop_map(|(version, role, name)| Hello { version, role, name }).boxed()
}

fn dispatcher_handshake() -> BoxedStrategy<DispatcherHandshake> {
    prop_oneof![
        (any::<[u8; 32]>(), any::<bool>()).prop_map(|(nonce, auth_required)| {
            DispatcherHandshake::Challenge(Challenge { nonce, auth_required })
        }),
        (text(), prop::option::of(bytes())).prop_map(|(dispatcher_version, proof)| {
            DispatcherHandshake::Welcome(Welcome { dispatcher_version, proof })
        }),
        text().prop_map(|reason| DispatcherHandshake::Reject(Reject { reason })),
    ]
    .boxed()
}

fn proof() -> BoxedStrategy<Proof> {
    let user = (prop::option::of(name()), bytes(), bytes())
        .prop_map(|(user, public_key, signature)| UserProof { user, public_key, signature });
    (prop::option::of(bytes()), any::<[u8; 32]>(), prop::option::of(user))
        .prop_map(|(mac, nonce, user)| Proof { mac, nonce, user })
        .boxed()
}

/// A valid value of any wire type, every variant reachable.
fn wire() -> impl Strategy<Value = Wire> {
    prop_oneof![
        hello().prop_map(Wire::Hello),
        dispatcher_handshake().prop_map(Wire::DispatcherHandshake),
        proof().prop_map(Wire::Proof),
        observer_to_dispatcher().prop_map(Wire::ObserverToDispatcher),
        dispatcher_to_observer().prop_map(Wire::DispatcherToObserver),
        runner_to_dispatcher().prop_map(Wire::RunnerToDispatcher),
        dispatcher_to_runner().prop_map(Wire::DispatcherToRunner),
        client_to_dispatcher().prop_map(Wire::ClientToDispatcher),
        dispatcher_to_client().prop_map(Wire::DispatcherToClient),
    ]
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn valid_messages_round_trip(message in wire()) {
        let bytes = message.encode();
        let back = message.decode_like(&bytes).map_err(|err| TestCaseError::fail(format!("{err}")))?;
        prop_assert_eq!(back, message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(payload in prop::collection::vec(any::<u8>(), 0..256)) {
        check_every_type(&payload)?;
    }

    #[test]
    fn mutated_messages_never_panic(
        message in wire(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = message.encode();
        mutate(&mut bytes, &mutations);
        check_every_type(&bytes)?;
    }

    #[test]
    fn a_valid_message_with_a_byte_appended_is_refused(message in wire(), extra in any::<u8>()) {
        let mut bytes = message.encode();
        bytes.push(extra);
        prop_assert!(message.decode_like(&bytes).is_err());
    }

    #[test]
    fn arbitrary_streams_split_into_frames_never_panic(
        stream in prop::collection::vec(any::<u8>(), 0..512),
        max_frame in 1usize..256,
    ) {
        let mut codec = frame_codec(max_frame);
        let mut buffer = BytesMut::from(stream.as_slice());
        // A frame decoder either yields frames, waits for more bytes, or
        // refuses an oversized length; after an error the connection ends.
        while let Ok(Some(frame)) = codec.decode(&mut buffer) {
            prop_assert!(frame.len() <= max_frame);
            check_every_type(&frame)?;
        }
    }

    #[test]
    fn framed_valid_messages_come_back_whole(messages in prop::collection::vec(wire(), 1..4)) {
        let mut stream = Vec::new();
        for message in &messages {
            let payload = message.encode();
            stream.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            stream.extend_from_slice(&payload);
        }
        let mut codec = frame_codec(protocol::MAX_FRAME);
        let mut buffer = BytesMut::from(stream.as_slice());
        for message in &messages {
            let frame = codec.decode(&mut buffer).ok().flatten();
            prop_assert!(frame.is_some(), "a frame of a valid stream was not decoded");
            let back = message.decode_like(&frame.unwrap_or_default()).map_err(|err| TestCaseError::fail(format!("{err}")))?;
            prop_assert_eq!(&back, message);
        }
        prop_assert!(buffer.is_empty());
    }
}
