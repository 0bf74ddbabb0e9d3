//! One test per rule of `Config::validate`, against a made-up machine: what is refused, under
//! which setting's name, what is accepted at the edge, and which refusal wins when several
//! settings are wrong.

use super::*;
use std::cell::{Cell, RefCell};

/// The pool's entry in these tests.
const ENTRY: &str = "app::square";

/// A machine of 8 CPUs (4 of which this process may run on), whose program is `/bin/app` and
/// whose entry table holds `app::square`, `app::warm_up`, `app::goodbye`, `plain` and, twice,
/// `app::twin`. It counts
/// what the checks read.
struct Fake {
    allowed: Option<Vec<usize>>,
    program: Result<OsString, Error>,
    allocation: Option<Allocation>,
    asked: RefCell<Vec<&'static str>>,
    entries_asked: Cell<usize>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            allowed: Some(vec![0, 1, 2, 3]),
            program: Ok("/bin/app".into()),
            allocation: None,
            asked: RefCell::new(Vec::new()),
            entries_asked: Cell::new(0),
        }
    }
}

impl World for Fake {
    fn cpus(&self) -> usize {
        self.asked.borrow_mut().push("cpus");
        8
    }

    fn allowed_cpus(&self) -> Option<CpuSet> {
        self.asked.borrow_mut().push("allowed_cpus");
        let cpus = self.allowed.as_ref()?;
        let mut set = CpuSet::new();
        for &cpu in cpus {
            set.set(cpu);
        }
        Some(set)
    }

    fn program(&self) -> Result<OsString, Error> {
        self.asked.borrow_mut().push("program");
        self.program.clone()
    }

    fn allocation(&self) -> Result<Allocation, Error> {
        self.asked.borrow_mut().push("allocation");
        self.allocation
            .clone()
            .ok_or_else(|| Error::config("remote", "not in a Slurm allocation"))
    }

    fn entry(&self, name: &str) -> Result<(), Error> {
        self.entries_asked.set(self.entries_asked.get() + 1);
        match name {
            "app::square" | "app::warm_up" | "app::goodbye" | "plain" => Ok(()),
            "app::twin" => Err(Error::DuplicateEntry {
                name: name.to_string(),
                first: "src/a.rs:1".into(),
                second: "src/b.rs:1".into(),
            }),
            _ => Err(Error::UnknownEntry {
                name: name.to_string(),
            }),
        }
    }
}

fn check(config: Config) -> Result<Validated, Error> {
    config.validate(ENTRY, &Fake::default())
}

fn accepted(config: Config) -> Validated {
    match check(config) {
        Ok(v) => v,
        Err(e) => panic!("refused: {e}"),
    }
}

/// The setting named by the refusal, and its message.
fn refused(config: Config) -> (&'static str, String) {
    refused_on(config, &Fake::default())
}

fn refused_on(config: Config, world: &Fake) -> (&'static str, String) {
    match config.validate(ENTRY, world) {
        Err(Error::InvalidConfig { setting, message }) => (setting, message),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

fn assert_refused(config: Config, setting: &str, says: &str) {
    let (got, message) = refused(config);
    assert_eq!(got, setting, "{message}");
    assert!(message.contains(says), "{setting}: {message:?}");
}

fn remote() -> Remote {
    Remote::command(["launch", "-i"]).workers(2)
}

fn with_remote() -> Config {
    Config {
        remotes: vec![remote()],
        ..Config::default()
    }
}

/// A setting's name, and a change to the default settings that breaks one rule about it.
type Rule = (&'static str, fn(&mut Config));

fn hook(name: &'static str, args: Vec<u8>) -> Option<Hook> {
    Some((name, Ok(args)))
}

// n_jobs

#[test]
fn n_jobs_other_than_all_a_count_or_a_share_is_refused_saying_what_is_allowed() {
    for bad in [
        NJobs::from(0),
        NJobs::from(-2),
        NJobs::from(i64::MIN),
        NJobs::from(1.5),
        NJobs::from(f64::NAN),
        NJobs::from(f64::INFINITY),
        NJobs::from(0.0),
        NJobs::from(-0.5),
    ] {
        let config = Config {
            n_jobs: bad,
            n_jobs_set: true,
            ..Config::default()
        };
        assert_refused(config, "n_jobs", "-1 for every CPU");
    }
}

#[test]
fn n_jobs_resolves_on_the_machine_and_is_clamped_to_its_cpus() {
    for (n_jobs, workers) in [
        (NJobs::from(-1), 8),
        (NJobs::from(3), 3),
        (NJobs::from(10_000u64), 8),
        (NJobs::from(0.5), 4),
        (NJobs::from(0.01), 1),
        (NJobs::from(1.0), 8),
    ] {
        let v = accepted(Config {
            n_jobs,
            n_jobs_set: true,
            ..Config::default()
        });
        assert_eq!(v.local_workers, workers, "{n_jobs:?}");
    }
    assert_eq!(
        accepted(Config::default()).local_workers,
        8,
        "the default: -1"
    );
}

#[test]
fn n_jobs_is_checked_in_debug_mode_though_it_runs_one_worker() {
    let debug = |n_jobs| Config {
        debug: true,
        n_jobs,
        n_jobs_set: true,
        ..Config::default()
    };
    assert_eq!(accepted(debug(NJobs::from(4))).local_workers, 1);
    assert_refused(debug(NJobs::from(0)), "n_jobs", "0 is not allowed");
}

#[test]
fn remote_hosts_have_local_workers_only_when_n_jobs_asks() {
    let v = accepted(with_remote());
    assert_eq!(v.local_workers, 0);
    assert_eq!(v.hosts.len(), 1);
    let v = accepted(Config {
        n_jobs: NJobs::from(2),
        n_jobs_set: true,
        ..with_remote()
    });
    assert_eq!(v.local_workers, 2);
    let bad = Config {
        n_jobs: NJobs::from(-2),
        n_jobs_set: true,
        ..with_remote()
    };
    assert_refused(bad, "n_jobs", "-2 is not allowed");
}

// debug

#[test]
fn debug_mode_refuses_remote_hosts() {
    let config = Config {
        debug: true,
        ..with_remote()
    };
    assert_refused(config, "remote", "no remote workers");
}

#[test]
fn debug_mode_refuses_each_setting_that_needs_a_process() {
    let needs_a_process: [Rule; 4] = [
        ("task_timeout", |c| {
            c.task_timeout = Some(Duration::from_secs(1))
        }),
        ("worker_memory_limit", |c| c.memory_limit = Some(1 << 30)),
        ("cpu_affinity", |c| c.cpu_affinity = vec![0]),
        ("env", |c| c.env = vec![("A".into(), "1".into())]),
    ];
    for (setting, set) in needs_a_process {
        let mut config = Config::default();
        set(&mut config);
        accepted(config);
        let mut config = Config {
            debug: true,
            ..Config::default()
        };
        set(&mut config);
        assert_refused(config, setting, "cannot be honoured in debug mode");
    }
}

// remote hosts

#[test]
fn remote_hosts_take_a_memory_limit_and_cpus_of_their_own() {
    let limited = Config {
        memory_limit: Some(1 << 30),
        ..with_remote()
    };
    assert_eq!(accepted(limited).memory_limit, Some(1 << 30));
    // CPUs this machine lacks are the hosts' business when no worker runs here...
    let pinned = Config {
        cpu_affinity: vec![900],
        ..with_remote()
    };
    assert_eq!(accepted(pinned).cpu_affinity, [900]);
    // ...and this machine's when local workers are pinned too.
    let both = Config {
        cpu_affinity: vec![900],
        n_jobs_set: true,
        ..with_remote()
    };
    let two = Fake {
        allowed: Some(vec![0, 1]),
        ..Fake::default()
    };
    let (setting, message) = refused_on(both, &two);
    assert_eq!(setting, "cpu_affinity");
    assert!(message.contains("CPU 900"), "{message}");
}

#[test]
fn remote_hosts_are_planned_with_this_program() {
    let config = Config {
        remotes: vec![
            remote(),
            Remote::command(["other"]).workers(3).program("/opt/x"),
        ],
        ..Config::default()
    };
    let v = accepted(config);
    let programs: Vec<&OsString> = v.hosts.iter().map(|h| &h.program).collect();
    assert_eq!(
        programs,
        [&OsString::from("/bin/app"), &OsString::from("/opt/x")]
    );
    let workers: Vec<usize> = v.hosts.iter().map(|h| h.workers).collect();
    assert_eq!(workers, [2, 3]);
}

#[test]
fn a_remote_the_plan_refuses_is_refused() {
    let config = Config {
        remotes: vec![Remote::command(["launch"]).workers(0)],
        ..Config::default()
    };
    assert_refused(config, "remote", "workers(0)");
    let unfinished = Config {
        remotes: vec![Remote::command(["launch"])],
        ..Config::default()
    };
    assert_refused(unfinished, "remote", "needs .workers(n)");
}

#[test]
fn slurm_reads_the_allocation_only_when_asked_for() {
    let config = Config {
        remotes: vec![Remote::slurm()],
        ..Config::default()
    };
    let outside = Fake::default();
    let (setting, message) = refused_on(config, &outside);
    assert_eq!(setting, "remote");
    assert!(message.contains("not in a Slurm allocation"), "{message}");
    let inside = Fake {
        allocation: Some(Allocation {
            nodes: vec!["n1".into(), "n2".into()],
            cpus: vec![2, 4],
        }),
        ..Fake::default()
    };
    let config = Config {
        remotes: vec![Remote::slurm()],
        ..Config::default()
    };
    let v = config.validate(ENTRY, &inside).expect("a plan");
    assert_eq!(v.hosts.iter().map(|h| h.workers).sum::<usize>(), 6);
    let local = Fake::default();
    accepted_on(Config::default(), &local);
    assert!(!local.asked.borrow().contains(&"allocation"));
    assert!(!local.asked.borrow().contains(&"program"));
}

fn accepted_on(config: Config, world: &Fake) -> Validated {
    match config.validate(ENTRY, world) {
        Ok(v) => v,
        Err(e) => panic!("refused: {e}"),
    }
}

#[test]
fn a_program_that_cannot_be_found_fails_a_pool_of_remote_hosts_only() {
    let lost = || Fake {
        program: Err(Error::spawn("cannot find this program's executable")),
        ..Fake::default()
    };
    let e = with_remote()
        .validate(ENTRY, &lost())
        .map(drop)
        .unwrap_err();
    assert!(matches!(e, Error::Spawn { .. }), "{e:?}");
    accepted_on(Config::default(), &lost());
}

// timeouts

#[test]
fn a_zero_init_or_exit_timeout_is_refused() {
    assert_refused(
        Config {
            init_timeout: Duration::ZERO,
            ..Config::default()
        },
        "init_timeout",
        "longer than zero",
    );
    assert_refused(
        Config {
            exit_timeout: Duration::ZERO,
            ..Config::default()
        },
        "exit_timeout",
        "longer than zero",
    );
    for edge in [Duration::from_nanos(1), Duration::MAX] {
        accepted(Config {
            init_timeout: edge,
            exit_timeout: edge,
            ..Config::default()
        });
    }
}

#[test]
fn a_host_timeout_under_a_second_is_refused_with_or_without_hosts() {
    for short in [Duration::ZERO, Duration::from_millis(999)] {
        assert_refused(
            Config {
                host_timeout: short,
                ..Config::default()
            },
            "host_timeout",
            "at least one second",
        );
        assert_refused(
            Config {
                host_timeout: short,
                ..with_remote()
            },
            "host_timeout",
            "at least one second",
        );
    }
    for edge in [Duration::from_secs(1), Duration::MAX] {
        accepted(Config {
            host_timeout: edge,
            ..with_remote()
        });
    }
}

#[test]
fn a_zero_task_timeout_is_refused() {
    assert_refused(
        Config {
            task_timeout: Some(Duration::ZERO),
            ..Config::default()
        },
        "task_timeout",
        "longer than zero",
    );
    for edge in [Duration::from_nanos(1), Duration::MAX] {
        accepted(Config {
            task_timeout: Some(edge),
            ..Config::default()
        });
    }
}

// name and env

#[test]
fn a_name_that_is_empty_too_long_or_with_nul_is_refused() {
    for bad in [String::new(), "a\0b".into(), "n".repeat(MAX_NAME + 1)] {
        assert_refused(
            Config {
                name: Some(bad),
                ..Config::default()
            },
            "name",
            "1 to 4096 bytes",
        );
    }
    let longest = accepted(Config {
        name: Some("n".repeat(MAX_NAME)),
        ..Config::default()
    });
    assert_eq!(longest.name.len(), MAX_NAME);
}

#[test]
fn the_name_defaults_to_the_entry_identifier() {
    assert_eq!(accepted(Config::default()).name, "square");
    let v = Config::default().validate("plain", &Fake::default());
    assert_eq!(v.map(|v| v.name).ok().as_deref(), Some("plain"));
}

#[test]
fn env_names_that_are_empty_or_hold_eq_or_nul_and_values_with_nul_are_refused() {
    for (key, value) in [("", "1"), ("A=B", "1"), ("A\0", "1"), ("A", "x\0y")] {
        assert_refused(
            Config {
                env: vec![("OK".into(), "1".into()), (key.into(), value.into())],
                ..Config::default()
            },
            "env",
            "not a valid variable name",
        );
    }
    let v = accepted(Config {
        env: vec![
            ("OMP_NUM_THREADS".into(), "1".into()),
            ("EMPTY".into(), "".into()),
        ],
        ..Config::default()
    });
    assert_eq!(v.env.len(), 2);
}

// counts and sizes

#[test]
fn zero_tasks_per_worker_bytes_chunk_or_window_is_refused() {
    assert_refused(
        Config {
            max_tasks_per_worker: Some(0),
            ..Config::default()
        },
        "max_tasks_per_worker",
        "at least 1",
    );
    assert_refused(
        Config {
            memory_limit: Some(0),
            ..Config::default()
        },
        "worker_memory_limit",
        "more than zero bytes",
    );
    assert_refused(
        Config {
            chunk_size: Some(0),
            ..Config::default()
        },
        "chunk_size",
        "at least 1",
    );
    assert_refused(
        Config {
            stream_window: Some(0),
            ..Config::default()
        },
        "stream_window",
        "at least 1",
    );
    let ones = accepted(Config {
        max_tasks_per_worker: Some(1),
        memory_limit: Some(1),
        chunk_size: Some(1),
        stream_window: Some(1),
        ..Config::default()
    });
    assert_eq!(
        (
            ones.max_tasks_per_worker,
            ones.memory_limit,
            ones.stream_window
        ),
        (Some(1), Some(1), Some(1))
    );
}

#[test]
fn max_frame_size_outside_1_kib_to_u32_max_is_refused() {
    let mut bad = vec![0, 1023];
    if let Ok(over) = usize::try_from(u64::from(u32::MAX) + 1) {
        bad.push(over);
    }
    for max_frame in bad {
        assert_refused(
            Config {
                max_frame,
                ..Config::default()
            },
            "max_frame_size",
            "between 1 KiB and",
        );
    }
    for max_frame in [1024, u32::MAX as usize] {
        assert_eq!(
            accepted(Config {
                max_frame,
                ..Config::default()
            })
            .max_frame,
            max_frame
        );
    }
}

// cpu_affinity

#[test]
fn a_cpu_out_of_range_is_refused_before_the_machine_is_asked() {
    for cpu in [CpuSet::MAX_CPU, 1 << 20] {
        let world = Fake::default();
        let (setting, message) = refused_on(
            Config {
                cpu_affinity: vec![0, cpu],
                ..Config::default()
            },
            &world,
        );
        assert_eq!(setting, "cpu_affinity");
        assert!(message.contains("out of range"), "{message}");
        assert!(!world.asked.borrow().contains(&"allowed_cpus"));
    }
}

#[test]
fn a_cpu_this_process_may_not_run_on_is_refused_naming_those_it_may() {
    let (setting, message) = refused(Config {
        cpu_affinity: vec![1, 5],
        ..Config::default()
    });
    assert_eq!(setting, "cpu_affinity");
    assert!(
        message.contains("CPU 5 is not one") && message.contains("CPUs 0, 1, 2, 3"),
        "{message}"
    );
    let v = accepted(Config {
        cpu_affinity: vec![3, 0, 3],
        ..Config::default()
    });
    assert_eq!(v.cpu_affinity, [3, 0, 3]);
}

#[test]
fn cpu_affinity_is_taken_as_is_when_the_system_does_not_say() {
    let unknown = Fake {
        allowed: None,
        ..Fake::default()
    };
    let v = accepted_on(
        Config {
            cpu_affinity: vec![42],
            ..Config::default()
        },
        &unknown,
    );
    assert_eq!(v.cpu_affinity, [42]);
    let world = Fake::default();
    accepted_on(Config::default(), &world);
    assert!(
        !world.asked.borrow().contains(&"allowed_cpus"),
        "no affinity, no question"
    );
}

// entries and hooks

#[test]
fn the_pool_entry_must_be_in_the_table_once() {
    let unknown = Config::default().validate("app::missing", &Fake::default());
    assert!(
        matches!(&unknown, Err(Error::UnknownEntry { name }) if name == "app::missing"),
        "{unknown:?}"
    );
    let twin = Config::default().validate("app::twin", &Fake::default());
    assert!(
        matches!(twin, Err(Error::DuplicateEntry { .. })),
        "{twin:?}"
    );
}

#[test]
fn a_hook_entry_must_be_in_the_table_once_and_its_arguments_encoded() {
    let setters: [fn(&mut Config, Option<Hook>); 2] =
        [|c, h| c.initializer = h, |c, h| c.on_exit = h];
    for set in setters {
        let mut missing = Config::default();
        set(&mut missing, hook("app::missing", vec![]));
        let e = check(missing).map(drop).unwrap_err();
        assert!(matches!(e, Error::UnknownEntry { .. }), "{e:?}");
        let mut twin = Config::default();
        set(&mut twin, hook("app::twin", vec![]));
        let e = check(twin).map(drop).unwrap_err();
        assert!(matches!(e, Error::DuplicateEntry { .. }), "{e:?}");
        let mut unencodable = Config::default();
        let codec = Error::Codec {
            entry: "app::warm_up".into(),
            action: "encode the arguments",
            message: "no".into(),
        };
        set(&mut unencodable, Some(("app::warm_up", Err(codec))));
        let e = check(unencodable).map(drop).unwrap_err();
        assert!(matches!(e, Error::Codec { .. }), "{e:?}");
    }
    let v = accepted(Config {
        initializer: hook("app::warm_up", vec![1, 2]),
        on_exit: hook("app::goodbye", vec![3]),
        ..Config::default()
    });
    assert_eq!(v.initializer, Some(("app::warm_up", vec![1, 2])));
    assert_eq!(v.on_exit, Some(("app::goodbye", vec![3])));
}

#[test]
fn hook_arguments_larger_than_a_frame_are_refused_under_the_hooks_name() {
    // A hook's frame: 9 bytes, the entry's name and the arguments.
    let fits = 1024 - 9 - "app::warm_up".len();
    let fitting = accepted(Config {
        max_frame: 1024,
        initializer: hook("app::warm_up", vec![0; fits]),
        on_exit: hook("app::warm_up", vec![0; fits]),
        ..Config::default()
    });
    assert!(fitting.initializer.is_some() && fitting.on_exit.is_some());
    let (setting, message) = refused(Config {
        max_frame: 1024,
        initializer: hook("app::warm_up", vec![0; fits + 1]),
        ..Config::default()
    });
    assert_eq!(setting, "initializer");
    assert!(message.contains("frame of 1025 bytes"), "{message}");
    assert_refused(
        Config {
            max_frame: 1024,
            on_exit: hook("app::warm_up", vec![0; fits + 1]),
            ..Config::default()
        },
        "worker_exit",
        "max_frame_size of 1024 bytes",
    );
}

// what is worked out

#[test]
fn a_task_timeout_sends_tasks_one_by_one_unless_a_chunk_size_is_set() {
    let chunk = |chunk_size, task_timeout| {
        accepted(Config {
            chunk_size,
            task_timeout,
            ..Config::default()
        })
        .chunk_size
    };
    let second = Some(Duration::from_secs(1));
    assert_eq!(chunk(None, None), None);
    assert_eq!(chunk(None, second), Some(1));
    assert_eq!(chunk(Some(8), second), Some(8));
    assert_eq!(chunk(Some(8), None), Some(8));
}

#[test]
fn accepted_settings_pass_through_unchanged() {
    let v = accepted(Config {
        start: false,
        disable_gpu: false,
        retries: 3,
        forward_stderr: false,
        transport: Transport::Pipes,
        progress: progress_bar::Mode::Forced,
        ..Config::default()
    });
    assert!(!v.start && !v.disable_gpu && !v.forward_stderr && !v.debug);
    assert_eq!(v.retries, 3);
    assert_eq!(v.transport, Transport::Pipes);
    assert_eq!(v.progress, progress_bar::Mode::Forced);
    assert_eq!(v.max_frame, DEFAULT_MAX_FRAME);
    assert_eq!(v.init_timeout, DEFAULT_INIT_TIMEOUT);
    assert_eq!(v.exit_timeout, DEFAULT_EXIT_TIMEOUT);
    assert_eq!(v.host_timeout, DEFAULT_HOST_TIMEOUT);
    assert!(v.hosts.is_empty());
}

// order

/// Each rule, in the order `validate` checks them, and a change to the default settings that
/// breaks it alone.
const RULES: [Rule; 19] = [
    ("remote", |c| {
        c.debug = true;
        c.remotes.push(remote());
    }),
    ("init_timeout", |c| c.init_timeout = Duration::ZERO),
    ("exit_timeout", |c| c.exit_timeout = Duration::ZERO),
    ("host_timeout", |c| {
        c.host_timeout = Duration::from_millis(10)
    }),
    ("remote", |c| {
        c.remotes.push(Remote::command(["launch"]).workers(0))
    }),
    ("n_jobs", |c| {
        c.n_jobs = NJobs::from(0);
        c.n_jobs_set = true;
    }),
    ("task_timeout", |c| {
        c.debug = true;
        c.task_timeout = Some(Duration::from_secs(1));
    }),
    ("name", |c| c.name = Some(String::new())),
    ("env", |c| c.env.push(("A=B".into(), "1".into()))),
    ("max_tasks_per_worker", |c| c.max_tasks_per_worker = Some(0)),
    ("task_timeout", |c| c.task_timeout = Some(Duration::ZERO)),
    ("worker_memory_limit", |c| c.memory_limit = Some(0)),
    ("chunk_size", |c| c.chunk_size = Some(0)),
    ("stream_window", |c| c.stream_window = Some(0)),
    ("cpu_affinity", |c| c.cpu_affinity.push(1 << 20)),
    ("cpu_affinity", |c| c.cpu_affinity.push(5)),
    ("max_frame_size", |c| c.max_frame = 0),
    ("initializer", |c| {
        c.max_frame = 1024;
        c.initializer = hook("app::warm_up", vec![0; 1024]);
    }),
    ("worker_exit", |c| {
        c.max_frame = 1024;
        c.on_exit = hook("app::warm_up", vec![0; 1024]);
    }),
];

#[test]
fn each_rule_alone_is_refused_under_its_setting() {
    for (i, (setting, break_it)) in RULES.iter().enumerate() {
        let mut config = Config::default();
        break_it(&mut config);
        assert_eq!(refused(config).0, *setting, "rule {i}");
    }
}

#[test]
fn of_two_broken_rules_the_earlier_is_reported() {
    for (i, pair) in RULES.windows(2).enumerate() {
        let [(first, break_first), (_, break_second)] = pair else {
            unreachable!()
        };
        let mut config = Config::default();
        break_second(&mut config);
        break_first(&mut config);
        assert_eq!(refused(config).0, *first, "rules {i} and {}", i + 1);
    }
}

#[test]
fn entries_are_looked_up_after_the_settings_and_before_the_hooks_frames() {
    let frame = Config {
        max_frame: 0,
        initializer: hook("app::missing", vec![]),
        ..Config::default()
    };
    assert_eq!(refused(frame).0, "max_frame_size");
    let big = Config {
        max_frame: 1024,
        initializer: hook("app::warm_up", vec![0; 1024]),
        on_exit: hook("app::missing", vec![]),
        ..Config::default()
    };
    let e = check(big).map(drop).unwrap_err();
    assert!(matches!(e, Error::UnknownEntry { .. }), "{e:?}");
    let pool_first = Config {
        initializer: hook("app::missing", vec![]),
        ..Config::default()
    }
    .validate("app::twin", &Fake::default())
    .map(drop)
    .unwrap_err();
    assert!(
        matches!(pool_first, Error::DuplicateEntry { .. }),
        "{pool_first:?}"
    );
}

#[test]
fn nothing_is_read_of_the_machine_or_the_entry_table_for_an_early_refusal() {
    let world = Fake::default();
    refused_on(
        Config {
            debug: true,
            ..with_remote()
        },
        &world,
    );
    assert!(
        world.asked.borrow().is_empty(),
        "{:?}",
        world.asked.borrow()
    );
    assert_eq!(world.entries_asked.get(), 0);
    let world = Fake::default();
    refused_on(
        Config {
            max_frame: 0,
            ..Config::default()
        },
        &world,
    );
    assert_eq!(*world.asked.borrow(), ["cpus"]);
    assert_eq!(world.entries_asked.get(), 0, "the entry is looked up last");
}

// min_workers

#[test]
fn min_workers_is_at_least_one_and_at_most_the_pools_workers() {
    let none = Config {
        min_workers: Some(0),
        ..with_remote()
    };
    assert_refused(none, "min_workers", "at least 1");
    let too_many = Config {
        min_workers: Some(3),
        ..with_remote()
    };
    assert_refused(
        too_many,
        "min_workers",
        "3 is more than the pool's 2 workers",
    );
    let some = Config {
        min_workers: Some(2),
        ..with_remote()
    };
    assert_eq!(accepted(some).min_workers, Some(2));
}
