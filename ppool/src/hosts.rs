//! Workers on other hosts, as a pool's builder describes them: [`Remote`], and, as pure
//! functions, how its settings become the hosts and launcher command lines the transport
//! starts (`plan`), and how a Slurm allocation is read.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::time::Duration;

/// Workers on other hosts, started through a launcher the cluster already runs: the system
/// `ssh`, Slurm's `srun`, or any command prefix. Each host gets one *host agent*, this very
/// program started again over the launcher, that starts and watches the host's workers and
/// talks to the pool over the launcher's stdin and stdout: no daemon, no open port, and
/// nothing that connects back.
///
/// ```no_run
/// use ppool::{ProcessPool, Remote, pool_entry};
/// use std::time::Duration;
///
/// #[pool_entry]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// ppool::main! {
///     fn main() -> Result<(), ppool::Error> {
///         let pool = ProcessPool::<square>::builder()
///             .n_jobs(2)                                  // two local workers too
///             .remote(Remote::ssh("node1").workers(8))
///             .remote(Remote::ssh("me@node2").workers(4))
///             .host_timeout(Duration::from_secs(30))
///             .build()?;
///         assert_eq!(pool.n_jobs(), 14);
///         assert_eq!(pool.batch(0..1000).wait()?.len(), 1000);
///         Ok(())
///     }
/// }
/// ```
///
/// The program on the host is by default this program's own absolute path, as on a shared
/// filesystem; [`program`](Remote::program) names another. It must be the same build: a
/// host whose program is of another build is refused with an error naming the host.
#[derive(Debug, Clone)]
pub struct Remote {
    kind: Kind,
    workers: Option<usize>,
    program: Option<OsString>,
    copy_program: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Ssh(String),
    Slurm,
    Command(Vec<OsString>),
}

impl Remote {
    /// A host reached with the system `ssh` client (`PPOOL_SSH` names another program), so
    /// that `~/.ssh/config`, agents, `ProxyJump` and Kerberos all apply. It runs with
    /// `BatchMode=yes`: a host that asks for a password fails instead of waiting.
    ///
    /// ```
    /// # use ppool::Remote;
    /// let node1 = Remote::ssh("node1").workers(8);
    /// let node2 = Remote::ssh("me@node2.example.org").workers(4);  // a user, a full name
    /// // Given to `ProcessPool::builder().remote(..)`, its `build()` reaches them.
    /// ```
    pub fn ssh(host: impl Into<String>) -> Self {
        Remote::new(Kind::Ssh(host.into()))
    }

    /// Every node of the Slurm allocation this program runs in (inside `sbatch` or
    /// `salloc`), each reached with `srun -N1 -n1 -w NODE --overlap -u`; by default with one
    /// worker per CPU the allocation gave on that node. Submit with `--no-kill`, so that a
    /// lost node does not end the whole allocation.
    ///
    /// ```
    /// # use ppool::Remote;
    /// let every_node = Remote::slurm();                     // one worker per CPU given
    /// let four_each = Remote::slurm().workers_per_node(4);
    /// ```
    pub fn slurm() -> Self {
        Remote::new(Kind::Slurm)
    }

    /// Any command that runs a program with its stdin and stdout forwarded: `PREFIX…
    /// <program> <agent arguments>` (`docker exec -i box`, `kubectl exec -i pod --`,
    /// `ip netns exec ns`, a site's own launcher).
    ///
    /// ```
    /// # use ppool::Remote;
    /// let container = Remote::command(["docker", "exec", "-i", "box"])
    ///     .workers(2)
    ///     .program("/app/bin/worker");                      // the path inside the container
    /// ```
    pub fn command<I, S>(prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Remote::new(Kind::Command(prefix.into_iter().map(Into::into).collect()))
    }

    fn new(kind: Kind) -> Self {
        Remote {
            kind,
            workers: None,
            program: None,
            copy_program: false,
        }
    }

    /// The number of workers on this host (for [`Remote::slurm`]: on each node). Required
    /// for `ssh` and `command` hosts.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Remote, Error};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let node = Remote::ssh("node1").workers(8);
    /// // Without a count, `build` fails before it reaches the host:
    /// let no_count = ProcessPool::<square>::builder().remote(Remote::ssh("node1")).build();
    /// assert!(matches!(no_count, Err(Error::InvalidConfig { setting: "remote", .. })));
    /// # Ok(()) } }
    /// ```
    ///
    /// [`Builder::build`](crate::Builder::build) refuses `0`, or an `ssh` or `command` host
    /// without it, with [`Error::InvalidConfig`] before it reaches any host.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// For [`Remote::slurm`]: the workers on each node, instead of one per CPU it was given.
    ///
    /// ```
    /// # use ppool::Remote;
    /// let two_each = Remote::slurm().workers_per_node(2);
    /// ```
    pub fn workers_per_node(self, n: usize) -> Self {
        self.workers(n)
    }

    /// The path of the program on the host (default: this program's own absolute path).
    ///
    /// ```
    /// # use ppool::Remote;
    /// let node = Remote::ssh("node1").workers(8).program("/opt/myapp/bin/myapp");
    /// ```
    ///
    /// [`Builder::build`](crate::Builder::build) refuses an empty path, or one given together
    /// with [`copy_program(true)`](Self::copy_program), with [`Error::InvalidConfig`].
    pub fn program(mut self, path: impl Into<OsString>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Copies this program to the host first, once per build, into
    /// `~/.cache/ppool/<build>/` there, and runs the copy: for hosts that do not share this
    /// program's filesystem. The copy is made by a command of its own over the same
    /// launcher (`sh -c 'cat > tmp && chmod && mv'`), never mixed into the pool's channel,
    /// and skipped when the host already has that build.
    ///
    /// ```
    /// # use ppool::Remote;
    /// let laptop_to_server = Remote::ssh("server").workers(4).copy_program(true);
    /// ```
    pub fn copy_program(mut self, copy: bool) -> Self {
        self.copy_program = copy;
        self
    }
}

/// How a host is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Via {
    Ssh,
    Srun,
    Command,
}

/// One host of a pool, ready to be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostSpec {
    /// Its name, for errors and insights.
    pub(crate) name: String,
    pub(crate) via: Via,
    /// The launcher's command line up to the program (`ssh … host`, `srun … -w node`, the
    /// prefix).
    pub(crate) prefix: Vec<OsString>,
    /// The program's path there.
    pub(crate) program: OsString,
    pub(crate) workers: usize,
    /// Copy this program there first (to `~/.cache/ppool/<build>/`), and run the copy.
    pub(crate) copy: bool,
}

/// What a Slurm allocation says, read from the environment and `scontrol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allocation {
    pub(crate) nodes: Vec<String>,
    pub(crate) cpus: Vec<usize>,
}

/// The hosts the builder's remotes describe, with `program` as the default program path and
/// `host_timeout` for ssh's keep-alives. `allocation` is called only for `Remote::slurm()`.
pub(crate) fn plan(
    remotes: &[Remote],
    program: &OsString,
    host_timeout: Duration,
    allocation: &mut dyn FnMut() -> Result<Allocation>,
) -> Result<Vec<HostSpec>> {
    let mut hosts = Vec::new();
    for remote in remotes {
        if remote.copy_program && remote.program.is_some() {
            return Err(Error::config(
                "remote",
                "copy_program(true) and program(path) together: the copy goes to the host's \
                 ~/.cache/ppool/, so leave the path out",
            ));
        }
        if remote.workers == Some(0) {
            return Err(Error::config(
                "remote",
                "workers(0): a host needs at least one worker",
            ));
        }
        let program = remote.program.clone().unwrap_or_else(|| program.clone());
        if program.is_empty() {
            return Err(Error::config("remote", "program(\"\"): an empty path"));
        }
        match &remote.kind {
            Kind::Ssh(host) => {
                if host.trim().is_empty() || host.starts_with('-') {
                    return Err(Error::config(
                        "remote",
                        format!("Remote::ssh({host:?}): not a host name"),
                    ));
                }
                let workers = remote.workers.ok_or_else(|| {
                    Error::config("remote", format!("Remote::ssh({host:?}) needs .workers(n)"))
                })?;
                hosts.push(HostSpec {
                    name: host.clone(),
                    via: Via::Ssh,
                    prefix: ssh_launcher(host, host_timeout),
                    program,
                    workers,
                    copy: remote.copy_program,
                });
            }
            Kind::Command(prefix) => {
                if prefix.is_empty() || prefix[0].is_empty() {
                    return Err(Error::config(
                        "remote",
                        "Remote::command: an empty command prefix",
                    ));
                }
                let workers = remote.workers.ok_or_else(|| {
                    Error::config("remote", "Remote::command(…) needs .workers(n)")
                })?;
                let name = prefix
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ");
                hosts.push(HostSpec {
                    name,
                    via: Via::Command,
                    prefix: prefix.clone(),
                    program,
                    workers,
                    copy: remote.copy_program,
                });
            }
            Kind::Slurm => {
                let allocation = allocation()?;
                for (node, cpus) in allocation.nodes.iter().zip(&allocation.cpus) {
                    hosts.push(HostSpec {
                        name: node.clone(),
                        via: Via::Srun,
                        prefix: srun_launcher(node),
                        program: program.clone(),
                        workers: remote.workers.unwrap_or(*cpus).max(1),
                        copy: remote.copy_program,
                    });
                }
            }
        }
    }
    Ok(hosts)
}

/// `ssh` with what a pool needs: no pty, no escape character, no password prompts, and
/// keep-alives that end it within about `host_timeout` of a silent link.
fn ssh_launcher(host: &str, host_timeout: Duration) -> Vec<OsString> {
    let program = std::env::var_os("PPOOL_SSH").unwrap_or_else(|| "ssh".into());
    let interval = (host_timeout.as_secs() / 3).clamp(1, 10);
    let count = (host_timeout.as_secs() / interval).max(1);
    let mut argv: Vec<OsString> = vec![program];
    for arg in [
        "-T".to_string(),
        "-e".into(),
        "none".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        format!("ServerAliveInterval={interval}"),
        "-o".into(),
        format!("ServerAliveCountMax={count}"),
        "--".into(),
        host.to_string(),
    ] {
        argv.push(arg.into());
    }
    argv
}

/// A single-task job step on `node` of the current allocation, unbuffered, sharing the
/// allocation's CPUs with the steps already running.
fn srun_launcher(node: &str) -> Vec<OsString> {
    [
        "srun",
        "-N1",
        "-n1",
        "-w",
        node,
        "--overlap",
        "--unbuffered",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// Parses `SLURM_JOB_CPUS_PER_NODE` (`2(x3),1`): the CPUs of each node, in order.
pub(crate) fn parse_cpus_per_node(value: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        let (n, times) = match part.split_once("(x") {
            Some((n, rest)) => (n, rest.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (part, 1),
        };
        let n: usize = n.parse().ok()?;
        cpus.extend(std::iter::repeat_n(n, times));
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Reads the allocation this program runs in.
pub(crate) fn read_allocation() -> Result<Allocation> {
    let outside = |why: &str| {
        Error::config(
            "remote",
            format!("Remote::slurm() runs inside a Slurm allocation (sbatch or salloc), and {why}"),
        )
    };
    if std::env::var_os("SLURM_JOB_ID").is_none() {
        return Err(outside("SLURM_JOB_ID is not set"));
    }
    let nodelist = std::env::var("SLURM_JOB_NODELIST")
        .map_err(|_| outside("SLURM_JOB_NODELIST is not set"))?;
    let out = std::process::Command::new("scontrol")
        .args(["show", "hostnames", &nodelist])
        .output()
        .map_err(|e| Error::spawn_io(format!("cannot run `scontrol show hostnames`: {e}"), e))?;
    if !out.status.success() {
        return Err(Error::spawn(format!(
            "`scontrol show hostnames {nodelist}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let nodes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let per_node = std::env::var("SLURM_JOB_CPUS_PER_NODE").unwrap_or_default();
    let cpus = parse_cpus_per_node(&per_node)
        .filter(|c| c.len() == nodes.len())
        .ok_or_else(|| {
            outside(&format!(
                "SLURM_JOB_CPUS_PER_NODE ({per_node:?}) does not match its {} nodes",
                nodes.len()
            ))
        })?;
    if nodes.is_empty() {
        return Err(outside("the allocation has no nodes"));
    }
    Ok(Allocation { nodes, cpus })
}

/// Quotes `arg` for a POSIX shell (ssh runs the remote command through the login shell).
pub(crate) fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_slurm() -> Result<Allocation> {
        Err(Error::config("remote", "no allocation"))
    }

    #[test]
    fn cpus_per_node_are_read_with_repeats() {
        assert_eq!(parse_cpus_per_node("2(x2)"), Some(vec![2, 2]));
        assert_eq!(parse_cpus_per_node("4,2(x3),1"), Some(vec![4, 2, 2, 2, 1]));
        assert_eq!(parse_cpus_per_node("8"), Some(vec![8]));
        for bad in ["", "x", "2(x", "2(xa)", "2(x2", "-1"] {
            assert_eq!(parse_cpus_per_node(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_remotes_are_invalid_config() {
        let program: OsString = "/bin/prog".into();
        let t = Duration::from_secs(30);
        for bad in [
            Remote::ssh("node").workers(0),
            Remote::ssh("").workers(1),
            Remote::ssh("-oProxyCommand=x").workers(1),
            Remote::ssh("node"),
            Remote::command(Vec::<String>::new()).workers(1),
            Remote::command([""]).workers(1),
            Remote::ssh("node")
                .workers(1)
                .copy_program(true)
                .program("/x"),
            Remote::ssh("node").workers(1).program(""),
            Remote::slurm(),
        ] {
            let e = plan(std::slice::from_ref(&bad), &program, t, &mut no_slurm);
            assert!(
                matches!(e, Err(Error::InvalidConfig { .. })),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn hosts_are_planned_in_order_with_their_launchers() {
        let program: OsString = "/bin/prog".into();
        let mut alloc = || {
            Ok(Allocation {
                nodes: vec!["n1".into(), "n2".into()],
                cpus: vec![2, 4],
            })
        };
        let hosts = plan(
            &[
                Remote::ssh("me@h").workers(3),
                Remote::command(["docker", "exec", "-i", "box"])
                    .workers(1)
                    .program("/app"),
                Remote::slurm(),
            ],
            &program,
            Duration::from_secs(9),
            &mut alloc,
        )
        .expect("a plan");
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["me@h", "docker exec -i box", "n1", "n2"]);
        let workers: Vec<usize> = hosts.iter().map(|h| h.workers).collect();
        assert_eq!(workers, [3, 1, 2, 4]);
        assert_eq!(hosts[1].program, OsString::from("/app"));
        assert_eq!(hosts[0].prefix.last(), Some(&OsString::from("me@h")));
        assert!(hosts[0].prefix.contains(&OsString::from("BatchMode=yes")));
        assert!(
            hosts[0]
                .prefix
                .contains(&OsString::from("ServerAliveInterval=3"))
        );
        assert!(hosts[2].prefix.contains(&OsString::from("--overlap")));
    }

    #[test]
    fn shell_quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/usr/bin/app"), "/usr/bin/app");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
