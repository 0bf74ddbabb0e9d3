"""Python anchors for ppool-bench: multiprocessing.Pool (fork context) and mpire.

Run by the Rust bench once per metric and repetition, as

    python anchors.py METRIC [--n N] [--workers W] [...]

and prints one JSON object on stdout:

    {"values": {"contender name": value, ...}, "notes": ["...", ...]}

Units match the Rust side of the same metric (see ppool-bench/src/metrics/).
A contender that fails is left out of "values" and explained in "notes".
"""

import argparse
import json
import multiprocessing
import os
import resource
import sys
import threading
import time

MASK64 = (1 << 64) - 1
MIB = 1024 * 1024

try:
    from mpire import WorkerPool
except ImportError:  # the bench still runs the multiprocessing anchors
    WorkerPool = None


# ---- task functions (module level so that they pickle by reference) ----

def echo(x):
    return x


def square(x):
    return x * x


def spin(iters):
    """xorshift64 loop, the same kernel as the Rust side (pure CPU work)."""
    x = 0x9E3779B97F4A7C15 ^ iters
    for _ in range(iters):
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
    return x


# ---- pools ----

def mp_pool(workers):
    return multiprocessing.get_context("fork").Pool(workers)


def mpire_pool(workers):
    return WorkerPool(n_jobs=workers, keep_alive=True)


def contenders(mp_name, mpire_name):
    """(name, pool factory) pairs; mpire only when it is installed."""
    out = [(mp_name, mp_pool)]
    if WorkerPool is not None:
        out.append((mpire_name, mpire_pool))
    return out


def warm_up(pool, workers, is_mpire):
    """Make sure every worker has started before anything is timed."""
    if is_mpire:
        pool.map(square, range(workers * 4))
    else:
        pool.map(square, range(workers * 4), chunksize=1)


# ---- metrics ----

def sync_rtt(args, out, _notes):
    """Microseconds per blocking apply() round trip of one int."""
    for name, make in contenders("mp.Pool.apply", "mpire.apply"):
        with make(args.workers) as pool:
            warm_up(pool, args.workers, name.startswith("mpire"))
            for i in range(100):
                pool.apply(echo, (i,))
            start = time.perf_counter()
            for i in range(args.n):
                if pool.apply(echo, (i,)) != i:
                    raise RuntimeError("echo returned a wrong value")
            out[name] = (time.perf_counter() - start) / args.n * 1e6


def bulk_tiny(args, out, _notes):
    """Tasks per second of map(square, range(n)) with default chunking."""
    for name, make in contenders("mp.Pool.map", "mpire.map"):
        with make(args.workers) as pool:
            warm_up(pool, args.workers, name.startswith("mpire"))
            start = time.perf_counter()
            result = pool.map(square, range(args.n))
            elapsed = time.perf_counter() - start
            if len(result) != args.n or result[-1] != (args.n - 1) ** 2:
                raise RuntimeError("map returned wrong results")
            out[name] = args.n / elapsed


def call_with(args, out, _notes):
    """Tasks per second of apply_async(..., callback=...) one task at a time."""
    for name, make in contenders("mp.Pool.apply_async", "mpire.apply_async"):
        with make(args.workers) as pool:
            warm_up(pool, args.workers, name.startswith("mpire"))
            done = threading.Event()
            lock = threading.Lock()
            count = [0]

            def on_result(_result):
                with lock:
                    count[0] += 1
                    if count[0] == args.n:
                        done.set()

            def on_error(err):
                print(f"{name}: task failed: {err!r}", file=sys.stderr)
                on_result(None)

            start = time.perf_counter()
            for i in range(args.n):
                pool.apply_async(square, (i,), callback=on_result, error_callback=on_error)
            if not done.wait(timeout=600):
                raise RuntimeError("callbacks did not all arrive")
            out[name] = args.n / (time.perf_counter() - start)


def echo_10mb(args, out, _notes):
    """MiB/s of an echo round trip of a bytes payload, counting the payload both ways."""
    payload = os.urandom(args.mib * MIB)
    for name, make in contenders("mp.Pool.apply", "mpire.apply"):
        with make(args.workers) as pool:
            warm_up(pool, args.workers, name.startswith("mpire"))
            pool.apply(echo, (payload,))
            start = time.perf_counter()
            for _ in range(args.rounds):
                if len(pool.apply(echo, (payload,))) != len(payload):
                    raise RuntimeError("echo returned a wrong length")
            elapsed = time.perf_counter() - start
            out[name] = 2 * args.mib * args.rounds / elapsed


def calibrate(target_s):
    iters = 1000
    while True:
        start = time.perf_counter()
        spin(iters)
        took = time.perf_counter() - start
        if took >= 0.002:
            break
        iters *= 2
    for _ in range(2):
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            spin(iters)
            runs.append(time.perf_counter() - start)
        runs.sort()
        iters = max(1, round(iters * target_s / runs[len(runs) // 2]))
    return iters


def cpu_scaling(args, out, _notes):
    """Parallel efficiency: tasks x serial task time / (workers x wall time), in %."""
    iters = calibrate(args.target_ms / 1000)
    serial_runs = 20
    start = time.perf_counter()
    for _ in range(serial_runs):
        spin(iters)
    per_task = (time.perf_counter() - start) / serial_runs
    for name, make in contenders("mp.Pool.map", "mpire.map"):
        with make(args.workers) as pool:
            warm_up(pool, args.workers, name.startswith("mpire"))
            start = time.perf_counter()
            pool.map(spin, [iters] * args.tasks)
            wall = time.perf_counter() - start
            out[name] = 100.0 * args.tasks * per_task / (args.workers * wall)


STARTUP_CODE = {
    "python -c pass": "pass",
    "mp.Pool(2) fork": (
        "import multiprocessing as mp\n"
        "p = mp.get_context('fork').Pool(2)\n"
        "p.map(abs, [1, -2], chunksize=1)\n"
        "p.close()\n"
        "p.join()\n"
    ),
    "mp.Pool(2) spawn": (
        "import multiprocessing as mp\n"
        "p = mp.get_context('spawn').Pool(2)\n"
        "p.map(abs, [1, -2], chunksize=1)\n"
        "p.close()\n"
        "p.join()\n"
    ),
    "mpire WorkerPool(2)": (
        "from mpire import WorkerPool\n"
        "with WorkerPool(n_jobs=2) as p:\n"
        "    p.map(abs, [1, -2], chunk_size=1)\n"
    ),
}


def startup_code(_args, out, notes):
    """The `python -c` programs the Rust side times as whole processes."""
    for name, code in STARTUP_CODE.items():
        if name.startswith("mpire") and WorkerPool is None:
            continue
        out[name] = code


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def map_rss(args, out, notes):
    """Peak RSS growth (MiB) of the parent while consuming imap(square, range(n))."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as err:
        notes.append(f"could not reset VmHWM ({err}); growth is against the earlier peak")
    rss_before = status_kib("VmRSS")
    with mp_pool(args.workers) as pool:
        total = 0
        for r in pool.imap(square, range(args.n), chunksize=args.chunk):
            total += r
    growth = (status_kib("VmHWM") - rss_before) / 1024
    if total != sum(i * i for i in range(args.n)):
        raise RuntimeError("imap returned wrong results")
    out[f"mp.Pool.imap chunksize={args.chunk}"] = growth


# ---- remote_scale: mp.Pool(N) at the worker counts of ppool's remote_scale ----

def nap_pid(ms):
    """Sleeps `ms` milliseconds; returns the worker's pid."""
    time.sleep(ms / 1000.0)
    return os.getpid()


def inc(x):
    return x + 1


def emit(obj):
    """One JSON line on stdout, flushed at once, so that a run cut short keeps its figures."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cpu_seconds():
    """User + system CPU time of this process alone (RUSAGE_SELF: not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_count():
    return len(os.listdir("/proc/self/task"))


def remote_scale(args, _out, _notes):
    """Start, first wave, efficiency with sleeping tasks and tiny-task rate of one
    fork Pool(N), printed as JSON lines (see ppool-bench/src/metrics/remote_scale.rs)."""
    try:
        remote_scale_steps(args)
    except Exception as err:  # the row's error; what was measured so far stays
        emit({"error": f"{err!r}"})


def remote_scale_steps(args):
    n = args.workers
    nap_ms = args.nap_ms
    ctx = multiprocessing.get_context("fork")
    emit({"at": "start"})
    start = time.perf_counter()
    pool = ctx.Pool(n)
    emit({"values": {"start ms": (time.perf_counter() - start) * 1e3, "workers": n}})
    threads = thread_count()

    emit({"at": "first wave"})
    lock = threading.Lock()
    first = {}
    done = threading.Event()
    answered = [0]
    failures = []

    def on_result(pid):
        now = time.perf_counter()
        with lock:
            first.setdefault(pid, now)
            answered[0] += 1
            if answered[0] == n:
                done.set()

    def on_error(err):
        with lock:
            failures.append(repr(err))
            answered[0] += 1
            if answered[0] == n:
                done.set()

    wave_start = time.perf_counter()
    for _ in range(n):
        pool.apply_async(nap_pid, (nap_ms,), callback=on_result, error_callback=on_error)
    if not done.wait(timeout=args.wave_timeout):
        raise RuntimeError(f"first wave: {answered[0]} of {n} tasks answered in time")
    if failures:
        raise RuntimeError(f"first wave: {len(failures)} tasks failed: {failures[0]}")
    last_first = max(first.values())
    emit({"values": {
        "first wave ms": (last_first - wave_start) * 1e3,
        "workers used": len(first),
    }})
    threads = max(threads, thread_count())

    emit({"at": "sleeping tasks"})
    tasks = args.waves * n
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    pids = pool.map(nap_pid, [nap_ms] * tasks)
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0
    if len(pids) != tasks:
        raise RuntimeError("sleeping tasks: map returned a wrong count")
    ideal = args.waves * nap_ms / 1000.0
    emit({"values": {
        "efficiency %": 100.0 * ideal / wall,
        "sleep cpu us/task": cpu / tasks * 1e6,
        "sleep workers used": len(set(pids)),
    }})
    threads = max(threads, thread_count())

    emit({"at": "tiny tasks"})
    count = 20_000
    while True:
        chunk, extra = divmod(count, n * 4)  # what map picks with no chunksize
        chunk += 1 if extra else 0
        cpu0 = cpu_seconds()
        start = time.perf_counter()
        result = pool.map(inc, range(count))
        wall = time.perf_counter() - start
        cpu = cpu_seconds() - cpu0
        if len(result) != count or result[-1] != count:
            raise RuntimeError("tiny tasks: map returned wrong results")
        if wall >= args.min_secs or count >= args.max_tiny:
            break
        count = min(args.max_tiny, max(count * 2, int(count * 1.3 * args.min_secs / wall)))
    emit({"values": {
        "tiny tasks/s": count / wall,
        "tiny cpu us/task": cpu / count * 1e6,
        "tiny tasks": count,
        "tiny chunksize": chunk,
    }})
    threads = max(threads, thread_count())

    rss = [status_kib_of(p.pid, "VmRSS") for p in pool._pool]
    rss = [r for r in rss if r is not None]
    values = {"threads": threads}
    if rss:
        values["rss per worker MiB"] = sum(rss) / len(rss) / 1024
    values["parent rss MiB"] = status_kib("VmRSS") / 1024
    emit({"values": values})

    emit({"at": "join"})
    start = time.perf_counter()
    pool.close()
    pool.join()
    emit({"values": {"join ms": (time.perf_counter() - start) * 1e3}})


# ---- shared: one large value to every worker (see ppool-bench/src/metrics/shared_broadcast.rs) ----

PAGE = 4096
RELEASE = "release"
BARRIER_WAIT = 120.0


def page_sum(buf):
    """One byte of each 4 KiB page, summed: every page read once."""
    return sum(buf[::PAGE])


def make_value(size):
    """`size` bytes, every page written (resident before it is handed to the pool)."""
    pattern = bytes((i * 31) & 0xFF for i in range(256))
    return (pattern * (size // 256 + 1))[:size]


def arrive(dir_):
    """Reads are done: leave this process's marker (named by its pid, holding the time) and
    wait until the parent creates `release`."""
    at = time.monotonic_ns()
    pid = os.getpid()
    tmp = os.path.join(dir_, f".{pid}")
    with open(tmp, "w") as f:
        f.write(str(at))
    os.rename(tmp, os.path.join(dir_, str(pid)))
    release = os.path.join(dir_, RELEASE)
    deadline = time.monotonic() + BARRIER_WAIT
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise RuntimeError("not released in time")
        time.sleep(0.002)
    return at


def read_arg(data, dir_):
    s = page_sum(data)
    return os.getpid(), arrive(dir_), s


INIT_DATA = None


def init_data(data):
    global INIT_DATA
    INIT_DATA = data


def read_init(dir_):
    s = page_sum(INIT_DATA)
    return os.getpid(), arrive(dir_), s


def read_mpire(shared, dir_):
    s = page_sum(shared)
    return os.getpid(), arrive(dir_), s


def mpire_square(_shared, x):
    return x * x


def rollup_kib(pid):
    """(Rss, Pss) of a process in KiB, from /proc/PID/smaps_rollup (zeros if it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def children_of(parent):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == parent:
            out.append(int(name))
    return out


def tree_memory():
    """(Rss, Pss) summed over this process and its children, KiB."""
    me = os.getpid()
    pids = [me] + children_of(me)
    both = [rollup_kib(p) for p in pids]
    return sum(r for r, _ in both), sum(p for _, p in both)


def arrived(dir_):
    return sum(1 for n in os.listdir(dir_) if n.isdigit())


def broadcast_one(name, dir_, n, size, expected, start, run, base, timeout, out):
    """Waits until the `n` workers have read the value (run() started their tasks), reads
    the memory of this process and its children, releases them, checks and records."""
    results = []
    failure = []

    def waiter():
        try:
            results.extend(run())
        except Exception as err:  # reported below
            failure.append(err)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while arrived(dir_) < n:
        if failure:
            raise failure[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{arrived(dir_)} of {n} workers read the value in time")
        time.sleep(0.002)
    rss, pss = tree_memory()
    open(os.path.join(dir_, RELEASE), "w").close()
    thread.join(timeout)
    if failure:
        raise failure[0]
    if len(results) != n or any(s != expected for _, _, s in results):
        raise RuntimeError("wrong results")
    pids = {pid for pid, _, _ in results}
    last = max(at for _, at, _ in results)
    kib = size / 1024
    out[f"{name}: ms"] = (last - start) / 1e6
    out[f"{name}: workers"] = len(pids)
    out[f"{name}: pss x"] = (pss - base[1]) / kib
    out[f"{name}: rss x"] = (rss - base[0]) / kib


def mem_available():
    """MemAvailable of /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def shared_broadcast(args, out, notes):
    """One value of `--bytes` to each of `--workers` workers: in every task (mp), to an
    initializer (mp, fork and spawn), as mpire's shared_objects (fork). Times from handing the value
    over (map / Pool / WorkerPool) until the last worker had read it."""
    n, size = args.workers, args.bytes
    ctx = multiprocessing.get_context("fork")

    def fresh_dir(name):
        d = os.path.join(args.dir, name.replace(" ", "-"))
        os.makedirs(d)
        return d

    def attempt(name, fn):
        try:
            fn(name)
        except Exception as err:
            notes.append(f"{name} (N={n}) failed: {err!r}")

    def per_task(name):
        d = fresh_dir(name)
        with ctx.Pool(n) as pool:
            pool.map(square, range(n * 4), chunksize=1)
            base = tree_memory()
            data = make_value(size)
            expected = page_sum(data)
            start = time.monotonic_ns()
            run = lambda: pool.starmap(read_arg, [(data, d)] * n, chunksize=1)
            broadcast_one(name, d, n, size, expected, start, run, base, args.wave_timeout, out)

    def initializer(name, ctx=ctx):
        d = fresh_dir(name)
        # The same pool without the value, for the memory it takes by itself.
        with ctx.Pool(n, initializer=init_data, initargs=(b"",)) as pool:
            pool.map(square, range(n * 4), chunksize=1)
            base = tree_memory()
        data = make_value(size)
        expected = page_sum(data)
        start = time.monotonic_ns()
        pool = ctx.Pool(n, initializer=init_data, initargs=(data,))
        try:
            run = lambda: pool.map(read_init, [d] * n, chunksize=1)
            broadcast_one(name, d, n, size, expected, start, run, base, args.wave_timeout, out)
        finally:
            pool.terminate()
            pool.join()

    def mpire_shared(name):
        d = fresh_dir(name)
        with WorkerPool(n_jobs=n, shared_objects=b"", start_method="fork", keep_alive=True) as pool:
            pool.map(mpire_square, range(n * 4), chunk_size=1)
            base = tree_memory()
            pool.terminate()
        data = make_value(size)
        expected = page_sum(data)
        start = time.monotonic_ns()
        with WorkerPool(n_jobs=n, shared_objects=data, start_method="fork") as pool:
            run = lambda: pool.map(read_mpire, [d] * n, chunk_size=1)
            broadcast_one(name, d, n, size, expected, start, run, base, args.wave_timeout, out)

    # The value in every task: (n + 2) copies at once (the parent's, one being pickled, one
    # per worker); left out when the Rust side says so or memory is short.
    need = (n + 2) * size + args.margin
    available = mem_available()
    if args.per_task and available is not None and available < need:
        notes.append(f"mp per task (N={n}) skipped: needs about {need / 2**30:.1f} GiB, "
                     f"the machine has {available / 2**30:.1f} GiB available")
    elif args.per_task:
        attempt("mp per task", per_task)
    attempt("mp initializer", initializer)
    # Under spawn (the default on macOS and Windows, and from Python 3.14 on Linux) the
    # initializer's arguments are pickled to each worker: the value is passed once per
    # worker, as it is to remote hosts.
    attempt("mp initializer spawn",
            lambda name: initializer(name, multiprocessing.get_context("spawn")))
    if WorkerPool is not None:
        attempt("mpire shared", mpire_shared)


def status_kib_of(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("metric")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--target-ms", type=float, default=10.0)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--nap-ms", type=float, default=50.0)
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--min-secs", type=float, default=1.0)
    parser.add_argument("--max-tiny", type=int, default=50_000_000)
    parser.add_argument("--wave-timeout", type=float, default=600.0)
    parser.add_argument("--bytes", type=int, default=MIB)
    parser.add_argument("--dir", default="")
    parser.add_argument("--margin", type=int, default=2 << 30)
    parser.add_argument("--per-task", type=int, default=1)
    args = parser.parse_args()

    metrics = {
        "sync_rtt": sync_rtt,
        "bulk_tiny": bulk_tiny,
        "call_with": call_with,
        "echo_10mb": echo_10mb,
        "cpu_scaling": cpu_scaling,
        "startup_code": startup_code,
        "map_rss": map_rss,
        "remote_scale": remote_scale,
        "shared_broadcast": shared_broadcast,
    }
    if args.metric not in metrics:
        parser.error(f"unknown metric {args.metric}")
    values, notes = {}, []
    if WorkerPool is None:
        notes.append("mpire is not installed: mpire anchors skipped")
    try:
        metrics[args.metric](args, values, notes)
    except Exception as err:  # report what was measured so far
        notes.append(f"python anchor {args.metric} failed: {err!r}")
    json.dump({"values": values, "notes": notes}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
