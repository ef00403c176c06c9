//! The traced process: an existing PID, or a command launched under the tracer.

use std::{
    ffi::CString,
    fs,
    io::{Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use nix::{
    sys::{
        ptrace,
        signal::Signal,
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::Pid,
};

#[derive(Clone, Debug)]
pub struct Target {
    pub pid: u32,
    pub command: String,
}

/// `PF_KTHREAD` in the flags of /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of /proc/PID/stat that matter here.
#[derive(Debug, PartialEq)]
pub struct ProcStat {
    pub zombie: bool,
    /// No user memory to trace.
    pub kernel_thread: bool,
    /// starttime, in clock ticks since boot: tells a reused PID apart.
    pub start_ticks: u64,
}

impl ProcStat {
    /// Fields are counted after the `(comm)`, which may itself contain
    /// spaces and parentheses: state is field 3, flags 9, starttime 22.
    pub fn parse(stat: &str) -> Option<ProcStat> {
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        Some(ProcStat {
            zombie: matches!(*fields.first()?, "Z" | "X"),
            kernel_thread: fields.get(6)?.parse::<u64>().ok()? & PF_KTHREAD != 0,
            start_ticks: fields.get(19)?.parse().ok()?,
        })
    }
}

/// An existing process, checked to be alive and to be a user process.
pub fn existing(pid: u32) -> Result<Target> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        bail!("no such process: PID {pid}");
    };
    let stat = ProcStat::parse(&stat).with_context(|| format!("cannot parse /proc/{pid}/stat"))?;
    if stat.zombie {
        bail!("process {pid} has already exited (it is a zombie)");
    }
    if stat.kernel_thread {
        bail!("PID {pid} is a kernel thread: it has no user-space memory to trace");
    }
    if pid as i32 == std::process::id() as i32 {
        bail!("leakscope cannot trace itself");
    }
    let command = command_line(pid).unwrap_or_else(|| format!("[pid {pid}]"));
    Ok(Target { pid, command })
}

/// The error for a failed read of `/proc/PID/FILE`: "has exited" only when
/// the process is gone; otherwise what the read failed with (permission
/// denied, too many open files, ...).
pub fn proc_read_error(pid: u32, file: &str, error: std::io::Error) -> anyhow::Error {
    let gone = matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
        && !Path::new(&format!("/proc/{pid}")).exists();
    if gone {
        anyhow::anyhow!("process {pid} has exited")
    } else {
        anyhow::anyhow!("cannot read /proc/{pid}/{file}: {error}")
    }
}

/// The process's command line, or `None` once it is gone.
pub fn command_line(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// A forked child that waits at a gate until the probes are attached, then
/// execs the command, so tracing starts at its first instruction.
///
/// The child is also ptrace-seized with PTRACE_O_TRACEEXIT: it stops on its
/// way out with its address space intact, so that its modules can be read
/// even when it ran for a few milliseconds. Nothing else is intercepted; the
/// signals it receives are passed on.
pub struct Launched {
    pub target: Target,
    /// The executable that will be exec'd.
    pub program: PathBuf,
    gate: Option<OwnedFd>,
    exec_error: OwnedFd,
}

/// Forks the command. Must run before any thread is started (the child runs
/// code between fork and exec).
pub fn launch(command: &[String]) -> Result<Launched> {
    let program = command.first().context("no command given")?;
    let path = resolve_program(program)?;
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let c_args = command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    // Built before fork: the child is traced from the fork on, and must not allocate.
    let argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let (gate_read, gate_write) = pipe()?;
    let (error_read, error_write) = pipe()?;

    // SAFETY: no other thread exists yet; the child only calls prctl, read,
    // write, execv and _exit before exec.
    match unsafe { nix::unistd::fork() }.context("fork failed")? {
        nix::unistd::ForkResult::Child => {
            drop(gate_write);
            drop(error_read);
            child_wait_then_exec(gate_read.as_raw_fd(), error_write.as_raw_fd(), &c_path, &argv)
        }
        nix::unistd::ForkResult::Parent { child } => {
            let pid = child.as_raw() as u32;
            ptrace::seize(child, ptrace::Options::PTRACE_O_TRACEEXIT)
                .context("cannot ptrace the launched child (is another tracer or a seccomp/Yama policy in the way?)")?;
            Ok(Launched {
                target: Target {
                    pid,
                    command: command.join(" "),
                },
                program: path,
                gate: Some(gate_write),
                exec_error: error_read,
            })
        }
    }
}

fn child_wait_then_exec(gate: RawFd, error: RawFd, path: &CString, argv: &[*const libc::c_char]) -> ! {
    // SAFETY: async-signal-safe calls only.
    unsafe {
        // If the tracer dies before opening the gate, do not run untraced.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let mut go = 0u8;
        if libc::read(gate, (&raw mut go).cast(), 1) != 1 {
            libc::_exit(127);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, 0);
        libc::execv(path.as_ptr(), argv.as_ptr());
        let errno = *libc::__errno_location();
        libc::write(error, (&raw const errno).cast(), size_of::<i32>());
        libc::_exit(127);
    }
}

impl Launched {
    /// Lets the child exec; fails if the exec did.
    pub fn release(&mut self) -> Result<()> {
        let gate = self.gate.take().context("already released")?;
        fs::File::from(gate)
            .write_all(&[1])
            .context("the launched child died before exec")?;
        let mut errno = [0u8; 4];
        let mut error = fs::File::from(self.exec_error.try_clone()?);
        match error.read(&mut errno)? {
            0 => Ok(()),
            _ => {
                let err = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
                bail!("cannot execute `{}`: {err}", self.target.command)
            }
        }
    }

    /// Handles the child's pending state changes (call on SIGCHLD). Runs
    /// `at_exit` while the child is stopped on its way out; returns the exit
    /// code (or 128 + signal) once it is gone.
    pub fn poll(&mut self, mut at_exit: impl FnMut()) -> Option<i32> {
        let pid = Pid::from_raw(self.target.pid as i32);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(_, code)) => return Some(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Some(128 + signal as i32),
                Ok(WaitStatus::PtraceEvent(_, _, event)) if event == ptrace::Event::PTRACE_EVENT_EXIT as i32 => {
                    at_exit();
                    let _ = ptrace::cont(pid, None);
                }
                // A group-stop (SIGSTOP, SIGTSTP, ...): stay stopped, as without
                // us, but keep listening for SIGCONT.
                Ok(WaitStatus::PtraceEvent(_, signal, event))
                    if event == libc::PTRACE_EVENT_STOP && is_stop_signal(signal) =>
                {
                    // SAFETY: PTRACE_LISTEN on our stopped tracee; no pointers.
                    unsafe { libc::ptrace(libc::PTRACE_LISTEN, pid.as_raw(), 0, 0) };
                }
                // The stop that ends a group-stop (SIGCONT arrived, reported
                // with SIGTRAP) or any other event: run on. Listening here too
                // would keep the child stopped after SIGCONT.
                Ok(WaitStatus::PtraceEvent(..)) => {
                    let _ = ptrace::cont(pid, None);
                }
                // A signal on its way to the child: deliver it.
                Ok(WaitStatus::Stopped(_, signal)) => {
                    let _ = ptrace::cont(pid, Some(signal));
                }
                Ok(WaitStatus::StillAlive) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
    /// Stops tracing a child that is still running, so that its signals are
    /// not held while the report is written.
    pub fn detach(self) {
        let pid = Pid::from_raw(self.target.pid as i32);
        if ptrace::interrupt(pid).is_err() {
            return;
        }
        let pending = match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Stopped(_, signal)) => Some(signal),
            Ok(WaitStatus::PtraceEvent(..)) => None,
            _ => return,
        };
        let _ = ptrace::detach(pid, pending);
    }
}

fn is_stop_signal(signal: Signal) -> bool {
    matches!(
        signal,
        Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
    )
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `program` as execvp would find it, checked before forking so that a typo is
/// reported plainly.
fn resolve_program(program: &str) -> Result<PathBuf> {
    let is_executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        if !is_executable(&path) {
            bail!("cannot execute `{program}`: not an executable file");
        }
        return Ok(path);
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .with_context(|| format!("command not found: `{program}`"))
}

/// The current program break: the end of the `[heap]` mapping, or where the
/// heap will start (start_brk, field 47 of /proc/PID/stat) before it exists.
pub fn program_break(pid: u32) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if let Some(line) = maps.lines().find(|l| l.ends_with("[heap]")) {
        let end = line.split_whitespace().next()?.split_once('-')?.1;
        return u64::from_str_radix(end, 16).ok();
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(44)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_rejects_missing_and_self() {
        let err = existing(u32::MAX / 2).unwrap_err().to_string();
        assert!(err.contains("no such process"), "{err}");
        assert!(existing(std::process::id()).is_err());
    }

    #[test]
    fn only_a_gone_process_has_exited() {
        let io = std::io::Error::from_raw_os_error;
        let own = std::process::id();
        assert_eq!(
            proc_read_error(own, "maps", io(libc::EACCES)).to_string(),
            format!("cannot read /proc/{own}/maps: Permission denied (os error 13)")
        );
        assert!(proc_read_error(own, "maps", io(libc::EMFILE))
            .to_string()
            .ends_with("Too many open files (os error 24)"));
        let gone = u32::MAX / 2;
        assert_eq!(
            proc_read_error(gone, "maps", io(libc::ENOENT)).to_string(),
            format!("process {gone} has exited")
        );
    }

    #[test]
    fn resolves_programs_on_path() {
        assert!(resolve_program("sh").unwrap().ends_with("sh"));
        assert!(resolve_program("no-such-program-xyz")
            .unwrap_err()
            .to_string()
            .contains("command not found"));
        assert!(resolve_program("/etc/passwd").is_err());
    }
}
