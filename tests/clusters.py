"""Real clusters on this machine for the cluster tests: a two-node Ray cluster and a
single-host Slurm cluster (``scripts/slurm-local.sh``). Each is started by the test
session and stopped by the process ids it started, never by a broad kill.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayNode:
    name: str  # the custom resource naming it ("node_a")
    proc: subprocess.Popen  # `ray start --block`, leader of its own process group
    temp_dir: Path


@dataclass
class RayCluster:
    address: str
    root: Path
    nodes: dict[str, RayNode] = field(default_factory=dict)

    def start_node(self, name: str, head: bool, gpus: int = 1, cpus: int = 1) -> RayNode:
        """The head listens on 127.0.0.1 only; a worker joins it over loopback.

        Ray 2.60 binds a node's servers to 127.0.0.1 only when its node IP is literally
        127.0.0.1, and ``ray start`` replaces a localhost node IP or GCS address by the
        host's routable IP (``services.resolve_ip_for_localhost``) unless
        ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` declares a one-machine cluster, under which
        ``ray start --address`` refuses to start a worker node. So the head runs with that
        variable at 0 and ``--node-ip-address 127.0.0.1``; the worker and every driver use
        the GCS address in its IPv4-mapped form (``[::ffff:127.0.0.1]:PORT``), which Ray
        does not rewrite. The worker's node IP is then ``::ffff:127.0.0.1`` and its raylet
        and agent listen on all interfaces (Ray binds the wildcard for any other node IP):
        on one host that cannot be avoided with Ray 2.60."""
        temp = self.root / name  # short: Ray's unix sockets live under it (107-byte limit)
        temp.mkdir(parents=True, exist_ok=True)
        port = self.address.rsplit(":", 1)[1]
        where = ["--head", "--port", port, "--include-dashboard", "false", "--node-ip-address", "127.0.0.1"] if head \
            else ["--address", self.address]
        argv = [str(RAY), "start", *where, "--block", "--num-cpus", str(cpus), "--num-gpus", str(gpus),
                "--resources", json.dumps({name: 1}), "--temp-dir", str(temp), "--disable-usage-stats"]
        env = dict(os.environ, RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
                   RAY_health_check_initial_delay_ms="1000", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0" if head else "1")
        with open(temp.with_suffix(".log"), "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        node = self.nodes[name] = RayNode(name, proc, temp)
        return node

    def wait_nodes(self, alive: int, timeout: float = 120) -> None:
        code = ("import ray,sys,time\nray.init(address=sys.argv[1], logging_level='ERROR')\n"
                "t=time.time()\nwhile sum(n['Alive'] for n in ray.nodes()) != int(sys.argv[2]):\n"
                "    assert time.time()-t < float(sys.argv[3]), ray.nodes()\n    time.sleep(0.5)\n")
        subprocess.run([sys.executable, "-c", code, self.address, str(alive), str(timeout)], check=True,
                       timeout=timeout + 30, env=dict(os.environ, RAY_DISABLE_USAGE_STATS="1"))

    def node_ids(self) -> dict[str, str]:
        """{"node_a": Ray node id, ...} of the live nodes, by the resource naming each."""
        code = ("import json,ray,sys\nray.init(address=sys.argv[1], logging_level='ERROR')\n"
                "print(json.dumps({r: n['NodeID'] for n in ray.nodes() if n['Alive'] for r in n['Resources'] "
                "if r.startswith('node_')}))")
        out = subprocess.run([sys.executable, "-c", code, self.address], check=True, capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, RAY_DISABLE_USAGE_STATS="1")).stdout
        return json.loads(out.strip().splitlines()[-1])

    def alive_actors(self, job: str, ranks: int = 1) -> list[str]:
        """Names of the stage actors ``<job>-<rank>`` the cluster still knows (in the
        ``s2d`` namespace; a killed actor's name is released)."""
        code = ("import json,ray,sys\nray.init(address=sys.argv[1], namespace='s2d', logging_level='ERROR')\n"
                "found = []\nfor r in range(int(sys.argv[3])):\n    try:\n"
                "        ray.get_actor(f'{sys.argv[2]}-{r}'); found.append(f'{sys.argv[2]}-{r}')\n"
                "    except ValueError:\n        pass\nprint(json.dumps(found))")
        out = subprocess.run([sys.executable, "-c", code, self.address, job, str(ranks)], check=True,
                             capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, RAY_DISABLE_USAGE_STATS="1")).stdout
        return json.loads(out.strip().splitlines()[-1])

    def listening(self, name: str) -> list[str]:
        """ADDRESS:PORT of every TCP socket the processes of node ``name`` listen on."""
        import psutil
        node = self.nodes[name]
        pids = {node.proc.pid, *_pids_in_session(node.proc.pid)}
        return sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections(kind="tcp")
                       if c.status == psutil.CONN_LISTEN and c.pid in pids})

    def kill_node(self, name: str) -> None:
        """A node dies: SIGKILL to every process its `ray start` started (its group) and to
        the Ray workers its raylet forked (each in its own process group, but in the
        session `ray start` leads); the stage runners die with their worker (PR_SET_PDEATHSIG)."""
        node = self.nodes.pop(name)
        _killpg(node.proc, signal.SIGKILL)
        for pid in _pids_in_session(node.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "node_a"] + ["node_a"]:
            if name in self.nodes:
                node = self.nodes.pop(name)
                _killpg(node.proc, signal.SIGTERM)  # `ray start --block` stops its processes
                try:
                    node.proc.wait(8)
                except subprocess.TimeoutExpired:
                    _killpg(node.proc, signal.SIGKILL)
                for pid in _pids_in_session(node.proc.pid):  # workers outside the group
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        shutil.rmtree(self.root, ignore_errors=True)


def _pids_in_session(sid: int) -> list[int]:
    """Processes of the session ``sid`` leads (our `ray start`, started with setsid)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # after ")": state ppid pgrp session
                pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return [p for p in pids if p != os.getpid()]


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    if sig == signal.SIGKILL:
        proc.wait()


def start_ray_cluster() -> RayCluster:
    """Head (node_a) and one worker (node_b) on loopback, one fake GPU and one CPU each."""
    cluster = RayCluster(f"[::ffff:127.0.0.1]:{free_port()}", Path(tempfile.mkdtemp(prefix="s2dray-", dir="/tmp")))
    try:
        cluster.start_node("node_a", head=True)
        cluster.wait_nodes(1)
        cluster.start_node("node_b", head=False)
        cluster.wait_nodes(2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@dataclass
class SlurmCluster:
    """A single-host Slurm cluster (two slurmd nodes n1, n2 of one fake GPU each)."""

    root: Path
    env: dict[str, str]

    def stop(self) -> None:
        subprocess.run([str(REPO / "scripts/slurm-local.sh"), "stop", str(self.root)], check=False, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)

    def run(self, *argv: str) -> str:
        return subprocess.run(list(argv), check=True, capture_output=True, text=True, env=self.env,
                              timeout=60).stdout


def start_slurm_cluster() -> SlurmCluster:
    root = Path(tempfile.mkdtemp(prefix="s2dslurm-", dir="/tmp"))
    port = str(free_port_block(4))
    env = dict(os.environ, S2D_SLURM_PORT=port, SLURM_CONF=str(root / "slurm.conf"))
    cluster = SlurmCluster(root, env)
    r = subprocess.run([str(REPO / "scripts/slurm-local.sh"), "start", str(root)], capture_output=True, text=True,
                       env=env, timeout=180)
    if r.returncode != 0:
        cluster.stop()
        raise RuntimeError(f"scripts/slurm-local.sh start failed:\n{r.stdout}\n{r.stderr}")
    return cluster


def free_port_block(n: int) -> int:
    """A base port with ``n`` free consecutive ports after it (checked, not reserved)."""
    for _ in range(50):
        base = free_port()
        if base + n >= 65535:
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports")


def rows(cli, sql: str) -> list[dict]:
    """The history's rows for ``sql``, through the real CLI."""
    r = cli("history", "--json", sql)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def assert_reattached(cli, output: str, backend: str, job: str) -> tuple[str, str]:
    """The second run re-attached to the first run's job: the same job as attempt 1 on the
    same node, the first run's placement REATTACHED; returns (first run, second run)."""
    assert f"re-attached to {backend} job {job} (attempt 1)" in output
    first, second = [r["run_id"] for r in rows(cli, "SELECT run_id FROM runs ORDER BY start_time")]
    placed = rows(cli, "SELECT run_id, attempt, job_id, node, status FROM placements WHERE stage_id = 'long' "
                       "ORDER BY start_time")
    assert [(p["run_id"], p["attempt"], p["job_id"], p["status"]) for p in placed] == \
        [(first, 1, job, "REATTACHED"), (second, 1, job, "FINISHED")]
    assert placed[0]["node"] == placed[1]["node"]
    return first, second


def live_rows(cli, sql: str) -> list[dict]:
    """Rows, or [] while the run has not created its history yet."""
    r = cli("history", "--json", sql)
    return json.loads(r.stdout) if r.returncode == 0 else []


def private_mount_argv(directory: Path, argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace of its own where ``directory`` is an empty tmpfs: what
    it writes there no other process sees (a home on a disk local to the executor, on one
    host). Needs CAP_SYS_ADMIN (root, as CI runs): see ``can_unshare``."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs s2d-private "$0" && exec "$@"',
            str(directory), *argv]


def can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode == 0
