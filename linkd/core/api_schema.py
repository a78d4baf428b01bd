"""The daemon's HTTP API, as data: request checking and the OpenAPI document. No I/O.

`linkd.runtime.daemon.api` serves the routes listed in `ROUTES`; a test checks that the
aiohttp application and `openapi()` describe exactly the same operations.

Errors are one shape for every route:

    {"error": {"status": 422, "message": "...", "problems": [{"path": "...", "line": 3,
               "message": "..."}]}}

400: the request itself is malformed (not JSON, a field of the wrong type: `path` names
the field, e.g. `body.spec`); 404: no such stack or container; 409: a conflict (the
stack is already up, the container is already running, the daemon is not in a
cluster); 422: the stack spec is invalid
(`path` is the stack-file path, e.g. `services.web.ports[0]`, as `linkd config` says).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from linkd.errors import LinkdError

API_VERSION = "v1"
_STACK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class ApiError(LinkdError):
    """A request the API refuses, with the HTTP status and the fields at fault."""

    def __init__(
        self, status: int, message: str, problems: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class CreateStack:
    """POST /v1/stacks: a stack spec (Compose-shaped), by YAML text or JSON object."""

    text: str  # YAML (JSON is YAML too)
    name: str | None  # overrides the spec's `name:`
    directory: str  # where relative paths (env_file, convention files) are read
    environment: dict[str, str] | None = None  # for ${VAR}; None: none (not the daemon's)
    source: str = "request body"  # the file the text came from, for errors
    default_project: str = ""  # the name when neither `name` nor the spec gives one
    # Files of variables for ${VAR} under `environment` (Compose's .env, --env-file),
    # relative to `directory`; none unless named.
    env_files: tuple[str, ...] = ()
    # More stack files, (source, text), merged onto `text` in order (`-f a -f b`, or
    # the override file beside the stack file).
    overrides: tuple[tuple[str, str], ...] = ()


MAX_OVERRIDES = 31  # with the stack file, the 32 files a stack may be made of


def parse_create(body: Any) -> CreateStack:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", [("body", "expected an object")])
    problems: list[tuple[str, str]] = []
    unknown = sorted(set(body) - {"name", "spec", "yaml", "directory", "environment",
                                  "source", "default_project", "env_files", "overrides"})
    problems += [(f"body.{k}", "unknown field") for k in unknown]
    name = body.get("name")
    if name is not None and not (isinstance(name, str) and _STACK_NAME.fullmatch(name)):
        problems.append(("body.name", "expected a stack name of a-z, 0-9, '_' and '-'"))
    directory = body.get("directory", "/")
    if not isinstance(directory, str) or not directory.startswith("/"):
        problems.append(("body.directory", "expected an absolute path"))
    spec, text = body.get("spec"), body.get("yaml")
    if (spec is None) == (text is None):
        problems.append(("body", 'give exactly one of "spec" (an object) or "yaml" (text)'))
    elif spec is not None and not isinstance(spec, dict):
        problems.append(("body.spec", "expected an object (a Compose-shaped stack)"))
    elif text is not None and not isinstance(text, str):
        problems.append(("body.yaml", "expected a string (a stack file's text)"))
    environment = body.get("environment")
    if environment is not None and not (
        isinstance(environment, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in environment.items())
    ):
        problems.append(("body.environment", "expected an object of strings"))
    source, default = body.get("source", "request body"), body.get("default_project", "")
    if not isinstance(source, str):
        problems.append(("body.source", "expected a string (the stack file's path)"))
    if not isinstance(default, str):
        problems.append(("body.default_project", "expected a string"))
    env_files = body.get("env_files", [])
    if not (isinstance(env_files, list) and all(isinstance(f, str) and f for f in env_files)):
        problems.append(("body.env_files", "expected a list of file names"))
    overrides = body.get("overrides", [])
    if not (isinstance(overrides, list) and len(overrides) <= MAX_OVERRIDES and all(
            isinstance(o, dict) and set(o) == {"source", "yaml"}
            and isinstance(o["source"], str) and isinstance(o["yaml"], str)
            for o in overrides)):
        problems.append(("body.overrides", f'expected a list of {{"source": NAME, "yaml": '
                                           f'TEXT}}, at most {MAX_OVERRIDES}'))
    if problems:
        raise ApiError(400, "invalid request", problems)
    return CreateStack(
        text if isinstance(text, str) else json.dumps(spec),
        name if isinstance(name, str) else None,
        str(directory),
        environment,
        str(source),
        str(default),
        tuple(env_files),
        tuple((o["source"], o["yaml"]) for o in overrides),
    )


def parse_flag(value: str | None, field: str) -> bool:
    if value in (None, "", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise ApiError(400, "invalid request", [(field, 'expected "true" or "false"')])


def tail_lines(value: str | None) -> int | None:
    """Docker's `tail`: a number of lines from the end, or `all` (None: the whole log);
    ValueError for anything else."""
    if value in (None, "", "all"):
        return None
    if value.isascii() and value.isdigit() and len(value) <= 9:
        return int(value)
    raise ValueError(f'expected a number of lines or "all", got {value!r}')


def parse_tail(value: str | None, field: str) -> int | None:
    try:
        return tail_lines(value)
    except ValueError as exc:
        raise ApiError(400, "invalid request", [(field, str(exc))]) from None


# -- the OpenAPI document -------------------------------------------------------------------

# (method, path, operationId, summary, success status)
ROUTES: tuple[tuple[str, str, str, str, int], ...] = (
    ("GET", "/v1/openapi.json", "openapi", "This document", 200),
    ("GET", "/v1/stacks", "listStacks", "The stacks this daemon runs", 200),
    ("POST", "/v1/stacks", "createStack", "Bring a stack up from a spec; returns when "
     "every container has started", 201),
    ("GET", "/v1/stacks/{stack}", "getStack", "A stack's plan and container states", 200),
    ("PUT", "/v1/stacks", "applyStack", "Create the stack a stack file names (`name`, "
     "else its `name:`, else `default_project`), or change it to the file: `linkd up -d`",
     200),
    ("PUT", "/v1/stacks/{stack}", "putStack", "Create the stack, or change a running one to "
     "the spec: only what changed is touched", 200),
    ("DELETE", "/v1/stacks/{stack}", "deleteStack", "Take a stack down, in order", 200),
    ("GET", "/v1/stacks/{stack}/containers", "listContainers", "A stack's containers", 200),
    ("GET", "/v1/stacks/{stack}/containers/{container}", "getContainer",
     "A container's plan and state", 200),
    ("GET", "/v1/stacks/{stack}/containers/{container}/logs", "getLogs",
     "A container's output (`tail=N`: its last N lines); `follow=true` streams it", 200),
    ("POST", "/v1/stacks/{stack}/containers/{container}/stop", "stopContainer",
     "Stop a container (stop_signal, then SIGKILL after stop_grace_period)", 200),
    ("POST", "/v1/stacks/{stack}/containers/{container}/start", "startContainer",
     "Start a stopped container", 200),
    ("POST", "/v1/stacks/{stack}/containers/{container}/restart", "restartContainer",
     "Stop, then start a container", 200),
    ("GET", "/v1/stacks/{stack}/networks", "listNetworks", "A stack's networks", 200),
    ("GET", "/v1/stacks/{stack}/graph", "getGraph", "The stack's wiring as a picture: "
     "`format=svg` (default), `dot` or `mermaid` (as `linkd graph`)", 200),
    ("GET", "/v1/stacks/{stack}/containers/{container}/dns", "getDns",
     "What the container's lookup of `name` gets, and why", 200),
    ("GET", "/v1/stacks/{stack}/containers/{container}/names", "getNames",
     "Every name the container may look up (its networks' services, containers and "
     "aliases, its link aliases) and its A and AAAA answers from there", 200),
    ("GET", "/v1/events", "events", "Server-sent events: lifecycle, DNS and stack changes, "
     "progress of an up and its image pulls", 200),
    ("GET", "/v1/nodes", "listNodes", "The cluster's nodes as this daemon sees them, and its "
     "own connection to the cluster (409: the daemon is not in a cluster)", 200),
)

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "message"],
            "properties": {
                "status": {"type": "integer"},
                "message": {"type": "string"},
                "problems": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string"},
                            "line": {"type": ["integer", "null"]},
                            "message": {"type": "string"},
                        },
                    },
                },
            },
        }
    },
}

_CREATE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _STACK_NAME.pattern},
        "spec": {"type": "object", "description": "A Compose-shaped stack"},
        "yaml": {"type": "string", "description": "A stack file's text"},
        "directory": {"type": "string", "description": "Base for relative paths"},
        "environment": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Variables for ${VAR} (default: none)"},
        "source": {"type": "string", "description": "The stack file's path, for errors"},
        "default_project": {"type": "string",
                            "description": "The stack's name when nothing else gives one"},
        "env_files": {"type": "array", "items": {"type": "string"},
                      "description": "Files of variables for ${VAR}, under environment "
                                     "(Compose's .env); relative to directory"},
        "overrides": {
            "type": "array", "maxItems": MAX_OVERRIDES,
            "items": {"type": "object", "required": ["source", "yaml"],
                      "additionalProperties": False,
                      "properties": {"source": {"type": "string"}, "yaml": {"type": "string"}}},
            "description": "More stack files merged onto this one in order, with Compose's "
                           "merge rules (-f a.yml -f b.yml); the files their include: and "
                           "extends: name are read beneath directory only",
        },
    },
}

_PROBE = {
    "type": "object",
    "required": ["start", "end", "exit_code", "output"],
    "properties": {
        "start": {"type": "number", "description": "Unix time"},
        "end": {"type": "number"},
        "exit_code": {"type": "integer", "description": "-1: killed at the timeout"},
        "output": {"type": "string", "description": "stdout and stderr, first 4096 bytes"},
    },
}

_HEALTH_STATUS = {"enum": ["starting", "healthy", "unhealthy", None],
                  "description": "null: the container has no healthcheck"}

# Docker's State.Health, lower-case; null when the container has no healthcheck.
_HEALTH = {
    "type": "object",
    "required": ["status", "failing_streak", "log"],
    "properties": {
        "status": {"enum": ["starting", "healthy", "unhealthy"]},
        "failing_streak": {"type": "integer"},
        "log": {"type": "array", "items": {"$ref": "#/components/schemas/Probe"},
                "description": "the last 5 probes, oldest first"},
    },
}

_CONTAINER_STATE = {
    "type": "object",
    "required": ["name", "status"],
    "properties": {"name": {"type": "string"}, "status": {"type": "string"},
                   "health": _HEALTH_STATUS,
                   "node": {"type": "string", "description": "of a stack spanning nodes: "
                            "the node that runs it (another node's: name, status, node)"}},
}

_NODE = {
    "type": "object",
    "required": ["name", "address", "labels", "version", "started", "state", "self"],
    "properties": {
        "name": {"type": "string", "description": "a host name"},
        "address": {"type": "string", "description": "the underlay address"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "version": {"type": "string", "description": "of the node's linkd"},
        "started": {"type": "number", "description": "Unix time its daemon started"},
        "state": {"enum": ["ready", "leaving", "unknown", "joining", "disconnected",
                           "conflict"],
                  "description": "this node: its connection to the cluster; another: "
                                 "what its record says, unknown while this one is "
                                 "disconnected"},
        "self": {"type": "boolean", "description": "the node answering"},
    },
}

_NODES = {
    "type": "object",
    "required": ["node", "state", "nodes"],
    "properties": {
        "node": {"type": "string", "description": "this node's name"},
        "state": {"enum": ["joining", "ready", "disconnected", "conflict"]},
        "since": {"type": "number", "description": "Unix time of the last change of state"},
        "error": {"type": ["string", "null"], "description": "why it is not ready"},
        "endpoints": {"type": "array", "items": {"type": "string"}},
        "ttl": {"type": "integer", "description": "seconds of the node's lease"},
        "read_at": {"type": ["number", "null"], "description": "when etcd was last read"},
        "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
        "invalid": {"type": "array", "description": "values under the nodes' prefix that "
                                                    "are not node records, and why"},
        "truncated": {"type": "boolean"},
    },
}

_CONTAINER = {
    "type": "object",
    "required": ["plan", "state", "health"],
    "properties": {
        "plan": {"type": "object"},
        "state": {"$ref": "#/components/schemas/ContainerState"},
        "health": {"oneOf": [{"$ref": "#/components/schemas/Health"}, {"type": "null"}]},
    },
}

# operationId -> schema of the success response, where the document gives one
_RESPONSES = {
    "listContainers": {"type": "array",
                       "items": {"$ref": "#/components/schemas/ContainerState"}},
    "getContainer": {"$ref": "#/components/schemas/Container"},
    "listNodes": {"$ref": "#/components/schemas/Nodes"},
}

_ERRORS_BY_ROUTE = {
    "createStack": (400, 409, 422),
    "putStack": (400, 422),
    "applyStack": (400, 422),
    "getStack": (404,),
    "deleteStack": (404,),
    "listContainers": (404,),
    "getContainer": (404,),
    "getLogs": (400, 404),
    "stopContainer": (404,),
    "startContainer": (404, 409),
    "restartContainer": (404,),
    "listNetworks": (404,),
    "getDns": (400, 404),
    "getNames": (404,),
    "listNodes": (409,),
}


def openapi() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, operation, summary, status in ROUTES:
        body = {"schema": _RESPONSES[operation]} if operation in _RESPONSES else {}
        responses: dict[str, Any] = {
            str(status): {"description": "OK", "content": {_content(operation): body}}
        }
        for code in _ERRORS_BY_ROUTE.get(operation, ()):
            responses[str(code)] = {
                "description": "error",
                "content": {"application/json": {"schema": _ref("Error")}},
            }
        op: dict[str, Any] = {"operationId": operation, "summary": summary,
                              "responses": responses}
        parameters = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in re.findall(r"{(\w+)}", path)
        ]
        if operation == "getLogs":
            parameters += [
                {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                {"name": "tail", "in": "query", "schema": {"type": "string", "default": "all"},
                 "description": "only the last N lines (then what follows, with follow)"},
            ]
        if operation == "getDns":
            parameters += [
                {"name": "name", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "type", "in": "query", "schema": {"type": "string", "default": "A"}},
            ]
        if parameters:
            op["parameters"] = parameters
        if operation in ("createStack", "putStack", "applyStack"):
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref("CreateStack")}},
            }
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "linkd", "version": API_VERSION},
        "paths": paths,
        "components": {"schemas": {
            "Error": _ERROR, "CreateStack": _CREATE, "Probe": _PROBE, "Health": _HEALTH,
            "ContainerState": _CONTAINER_STATE, "Container": _CONTAINER,
            "Node": _NODE, "Nodes": _NODES,
        }},
    }


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _content(operation: str) -> str:
    if operation == "events":
        return "text/event-stream"
    if operation == "getLogs":
        return "text/plain"
    return "application/json"
