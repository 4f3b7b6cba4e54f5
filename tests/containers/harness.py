"""Stand-ins the container tests run inside SPE's control-plane image, on a workspace pod's
loopback (the pod has no other network):

- ``airlock``: SPE's own TCP airlock (spe.workspaces.airlock_tcp.TcpAirlock, the database on a
  bind mount) whose pod directory knows one pod, this one, at 127.0.0.1: there is no cluster to
  ask (tests/integration/test_kube_airlock.py checks the identity rules themselves);
- ``hub``: the few calls of JupyterHub's API that jupyterhub-singleuser makes (the version, the
  token's owner, activity), so that the workspace server starts as it does under a hub;
- ``probe``: the browser, through the pod's port: the server's API, its kernels, one cell over
  the kernel websocket. Prints one line of JSON.

Only the standard library, tornado and SPE (all in the control-plane image).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from typing import Any


def serve_airlock(args: argparse.Namespace) -> None:
    from spe.workspaces import kube_objects
    from spe.workspaces.airlock_tcp import PodFacts, TcpAirlock

    class ThisPod:
        def pod(self, namespace: str, name: str) -> PodFacts | None:
            if name != args.pod:
                return None
            labels = kube_objects.workspace_labels(args.project, args.user)
            return PodFacts("127.0.0.1", labels, "Running")

    async def main() -> None:
        airlock = TcpAirlock("127.0.0.1", args.port, ThisPod(), args.namespace)
        await airlock.start()
        print("airlock ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_hub(args: argparse.Namespace) -> None:
    import jupyterhub
    import tornado.web

    tokens = set(json.loads(os.environ["HUB_STANDIN_TOKENS"]))
    model = {
        "kind": "user",
        "name": args.user,
        "admin": False,
        "groups": [],
        "server": None,
        "scopes": [f"access:servers!server={args.user}/{args.project}"],
        "session_id": None,
    }

    class Api(tornado.web.RequestHandler):
        def prepare(self) -> None:
            self.set_header("X-JupyterHub-Version", jupyterhub.__version__)

        def get(self, path: str) -> None:
            if path.strip("/") == "":
                self.finish({"version": jupyterhub.__version__})
                return
            kind, _, token = self.request.headers.get("Authorization", "").partition(" ")
            if kind.lower() not in ("token", "bearer") or token not in tokens:
                self.set_status(403)
                self.finish({"status": 403, "message": "unknown token"})
                return
            self.finish(model)

        def post(self, path: str) -> None:
            self.finish({})

    async def main() -> None:
        app = tornado.web.Application([(r"/hub/api(.*)", Api)])
        app.listen(args.port, "127.0.0.1")
        print("hub ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _probe(args: argparse.Namespace) -> dict[str, Any]:
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    base = f"http://127.0.0.1:{args.port}{args.prefix}"
    headers = {"Authorization": f"token {args.token}"}
    client = AsyncHTTPClient()
    out: dict[str, Any] = {}

    async def fetch(path: str, method: str = "GET", body: Any = None) -> Any:
        data = None if body is None else json.dumps(body)
        answer = await client.fetch(
            base + path, method=method, headers=headers, body=data, request_timeout=60
        )
        return json.loads(answer.body or b"null")

    out["version"] = (await fetch("api"))["version"]
    specs = await fetch("api/kernelspecs")
    out["kernels"] = sorted(specs["kernelspecs"])
    out["default_kernel"] = specs["default"]
    try:
        await client.fetch(base + "api/contents", request_timeout=30)
        out["anonymous"] = 200
    except HTTPClientError as exc:
        out["anonymous"] = exc.code
    kernel = await fetch("api/kernels", "POST", {"name": specs["default"]})
    url = base.replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=30))
    session, msg_id = uuid.uuid4().hex, uuid.uuid4().hex
    ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "session": session,
                    "username": args.user,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {
                    "code": args.code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "buffers": [],
            }
        )
    )
    texts: list[str] = []
    while True:
        raw = await asyncio.wait_for(ws.read_message(), 60)
        if raw is None:  # closed before the kernel answered (the recorder fails closed so)
            out["status"] = "closed"
            break
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == "stream":
            texts.append(content["text"])
        elif kind == "execute_result":
            texts.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            texts.append(f"{content['ename']}: {content['evalue']}")
        elif kind == "execute_reply":
            out["status"] = content["status"]
            break
    ws.close()
    out["output"] = "".join(texts)
    await fetch(f"api/kernels/{kernel['id']}", "DELETE")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["airlock", "hub", "probe"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--namespace", default="spe")
    parser.add_argument("--project", default="study")
    parser.add_argument("--user", default="researcher")
    parser.add_argument("--pod", default="")
    parser.add_argument("--prefix", default="/")
    parser.add_argument("--token", default="")
    parser.add_argument("--code", default="")
    args = parser.parse_args()
    if args.role == "airlock":
        serve_airlock(args)
    elif args.role == "hub":
        serve_hub(args)
    else:
        print(json.dumps(asyncio.run(_probe(args))), flush=True)


if __name__ == "__main__":
    main()
