"""Runs as Ray tasks: each run is a task with the study's ``resources`` (``num_cpus``,
``num_gpus``); ``address`` connects to an existing cluster, none starts a local one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from sftmix.config import Resources
from sftmix.errors import SftmixError
from sftmix.study import worker
from sftmix.study.executors.local import Executor, Handle
from sftmix.threads import thread_env


class RayExecutor(Executor):
    """Runs as Ray tasks on a Ray cluster (a local one when no address is given)."""

    name = "ray"

    def __init__(self, resources: Resources, progress: bool = True, address: str | None = None):
        super().__init__(resources, progress)
        self.address = address

    def check(self) -> None:
        try:
            # imported here: ray is an optional extra
            import ray
        except ImportError:
            raise SftmixError("executor ray needs Ray: pip install 'sftmix[ray]'") from None
        if self.resources.nodes > 1:
            raise SftmixError(f"resources.nodes = {self.resources.nodes}: with Ray, one run is one task on one node; "
                              "use executor slurm for runs over several nodes")
        if self.address and self.address != "auto":
            host, _, port = self.address.replace("ray://", "").rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
            except (OSError, ValueError) as e:
                raise SftmixError(f"Ray cluster at {self.address} is not reachable ({e}); start it with `ray start --head` "
                                  "or leave out --address to start a local one") from None
        if not ray.is_initialized():
            kwargs = {"address": self.address} if self.address else {"num_cpus": os.cpu_count(), "num_gpus": _gpu_count(),
                                                                      "object_store_memory": 256 * 1024 * 1024}
            try:
                ray.init(include_dashboard=False, log_to_driver=self.progress, ignore_reinit_error=True,
                         runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}, **kwargs)
            except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or its own errors here
                raise SftmixError(_ray_init_error(self.address, e)) from None
        total = ray.cluster_resources()
        for key, want in (("CPU", self.resources.cpus), ("GPU", self.resources.gpus)):
            if want and total.get(key, 0) < want:
                raise SftmixError(f"resources: a run asks for {want} {key} but the Ray cluster has {total.get(key, 0):g} in "
                                  "total; no run could ever start")
        self._remote = ray.remote(max_retries=0)(worker.execute)

    @property
    def parallel(self) -> int:
        if self.resources.parallel:
            return self.resources.parallel
        # imported here: ray is an optional extra
        import ray

        total = ray.cluster_resources()
        by_cpu = int(total.get("CPU", 1) // self.resources.cpus)
        by_gpu = int(total.get("GPU", 0) // self.resources.gpus) if self.resources.gpus else by_cpu
        return max(1, min(by_cpu, by_gpu))

    def submit(self, run_id: str, config: dict, run_out: Path) -> Handle:
        cpus = self.resources.cpus
        ref = self._remote.options(num_cpus=cpus, num_gpus=self.resources.gpus, name=f"sftmix-{run_id}",
                                   runtime_env={"env_vars": thread_env(cpus)}).remote(config, str(run_out), cpus, False, self._launcher(),
                                                                         os.getcwd())
        return Handle(run_id, run_out, ref)

    def finished(self, handles: list[Handle], timeout: float) -> list[tuple[Handle, str | None]]:
        # imported here: ray is an optional extra
        import ray

        by_ref = {h.ref: h for h in handles}
        done, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        out = []
        for ref in done:
            try:
                ray.get(ref)
                out.append((by_ref[ref], None))
            except Exception as e:  # noqa: BLE001 - the worker died (OOM kill, node loss): the driver records it
                out.append((by_ref[ref], f"Ray task failed: {type(e).__name__}: {str(e)[:500]}"))
        return out

    def describe(self) -> str:
        return f"ray ({self.address or 'local cluster'})"

    def close(self) -> None:
        # imported here: ray is an optional extra
        import ray

        if ray.is_initialized() and not self.address:
            ray.shutdown()


def _ray_init_error(address: str | None, err: BaseException) -> str:
    """Why ``ray.init`` failed, in words a user can act on.

    Since Ray 2.59 a cluster started with ``ray start`` requires token authentication whenever a
    token exists on its machine (``~/.ray/auth_token`` is written by the first local
    ``ray.init()``), but a driver given an explicit address sends its token only when
    ``RAY_AUTH_MODE=token`` is set: Ray does not send a secret to an address unless told to, and
    neither does sftmix."""
    chain, e = [], err
    while e is not None and len(chain) < 8:
        chain.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    text = "\n".join(chain)
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "auth token" in text.lower():
        if "no authentication token was found" in text:
            return (f"RAY_AUTH_MODE=token but no Ray token was found for {where}: put the cluster's token in "
                    "RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token")
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return (f"{where} refused this machine's Ray token (RAY_AUTH_MODE=token): give the cluster's own token in "
                    "RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token")
        return (f"{where} requires token authentication: set RAY_AUTH_MODE=token, with the cluster's token in "
                "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (`ray get-auth-token` prints it on the head node)")
    last = next((line.strip() for line in reversed(str(err).strip().splitlines()) if line.strip()), type(err).__name__)
    return f"could not connect to {where}: {last[:500]}"


def _gpu_count() -> int:
    try:
        # imported here: torch is heavy; `sftmix --help` and the data commands do not need it
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0
