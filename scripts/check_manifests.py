#!/usr/bin/env python3
"""Checks deploy/kubernetes against the Kubernetes API schemas, without a cluster.

Run it through scripts/check_manifests.sh, which makes its virtualenv. For the
base and each overlay under deploy/kubernetes/overlays:

1. Render it. The base lists resources only, so this script renders it itself
   (it refuses any other kustomization field, which it would not apply). Where
   `kubectl` is installed, `kubectl kustomize` renders the base too (which must
   give the same objects) and the overlays (which only it can render).
2. Validate every object strictly (unknown fields are errors, as with kubectl's
   default server-side field validation): built-in kinds against the official
   OpenAPI schemas bundled in the PyPI package kubernetes-validate, for the
   oldest and newest Kubernetes versions named below; RayCluster against
   KubeRay's CRD vendored in deploy/kubernetes/schemas/ (its v1 schema, made
   strict the same way; its metadata against Kubernetes' ObjectMeta).
3. Check the references the schemas cannot see: selectors match the pods they
   select, named ports and probe ports exist, every ConfigMap a pod reads is
   rendered, every Secret and key it reads is in the example Secrets, every
   volume claim is rendered, and the Ray address names the RayCluster's head
   service.

Exits non-zero on any problem, printing each with the object and field path.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from kubernetes_validate.version import __version__ as kubernetes_validate_version
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
OVERLAYS = DEPLOY / "overlays"
SECRETS_EXAMPLE = DEPLOY / "examples" / "secrets.example.yaml"
RAYCLUSTER_CRD = DEPLOY / "schemas" / "ray.io_rayclusters.yaml"
# The oldest Kubernetes the manifests claim to fit, and the newest schemas bundled.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# What the base's kustomization may hold: a plain list of resource files.
BASE_FIELDS = {"apiVersion", "kind", "resources"}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def name_of(obj: dict) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def load_documents(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render_base(directory: Path, problems: Problems) -> list[dict]:
    """The objects of a kustomization that only lists resource files."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    where = str((directory / "kustomization.yaml").relative_to(ROOT))
    extra = set(kustomization) - BASE_FIELDS
    if extra:
        problems.add(where, f"fields this renderer does not apply: {sorted(extra)} (keep the base a list of resources)")
    objects = []
    seen = set()
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if not path.is_file():
            problems.add(where, f"resource {resource} is not a file in {directory.name}/")
            continue
        for obj in load_documents(path):
            key = (obj.get("apiVersion"), obj.get("kind"), (obj.get("metadata") or {}).get("name"))
            if key in seen:
                problems.add(where, f"{name_of(obj)} is defined twice")
            seen.add(key)
            obj["__file__"] = str(path.relative_to(ROOT))
            objects.append(obj)
    listed = {(directory / r).resolve() for r in kustomization.get("resources", [])}
    for path in sorted(directory.glob("*.yaml")):
        if path.name != "kustomization.yaml" and path.resolve() not in listed:
            problems.add(where, f"{path.name} is in the base's directory but not in its resources")
    return objects


def kustomize(directory: Path, kubectl: str | None, problems: Problems) -> list[dict] | None:
    """`kubectl kustomize DIR`, or None without kubectl."""
    if kubectl is None:
        return None
    run = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if run.returncode != 0:
        problems.add(str(directory.relative_to(ROOT)), f"kubectl kustomize failed: {run.stderr.strip()}")
        return []
    objects = [d for d in yaml.safe_load_all(run.stdout) if d is not None]
    for obj in objects:
        obj["__file__"] = f"{directory.relative_to(ROOT)} (rendered)"
    return objects


def strip(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "__file__"}


def canonical(objects: list[dict]) -> list[str]:
    return sorted(json.dumps(strip(o), sort_keys=True) for o in objects)


# ------------------------------------------------------------------ schemas


def strict_crd_schema(schema: dict) -> dict:
    """An OpenAPI v3 CRD schema as a JSON schema that refuses unknown fields
    (kubectl's default field validation) and accepts null where `nullable`."""
    s = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, list):
            for n in node:
                walk(n)
            return
        if not isinstance(node, dict):
            return
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        for key in ("properties", "patternProperties"):
            for child in (node.get(key) or {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            walk(node.get(key) or [])

    walk(s)
    return s


class CrdValidator:
    def __init__(self, crd_path: Path, definitions: dict) -> None:
        crd = load_documents(crd_path)[0]
        self.group = crd["spec"]["group"]
        self.kind = crd["spec"]["names"]["kind"]
        self.versions = {}
        for v in crd["spec"]["versions"]:
            schema = strict_crd_schema(v["schema"]["openAPIV3Schema"])
            # metadata is `type: object` in a CRD; the API server checks it as ObjectMeta.
            schema["properties"]["metadata"] = {
                "$ref": "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
            }
            self.versions[f"{self.group}/{v['name']}"] = (v, schema)
        registry = Resource.from_contents(definitions) @ Registry()
        self.registry = registry

    def errors(self, obj: dict) -> list[str]:
        entry = self.versions.get(obj.get("apiVersion"))
        if entry is None:
            return [f"apiVersion {obj.get('apiVersion')} is not one of the CRD's {sorted(self.versions)}"]
        version, schema = entry
        if not version.get("served", False):
            return [f"{obj['apiVersion']} is not served"]
        validator = jsonschema.Draft4Validator(schema, registry=self.registry)
        out = []
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in e.absolute_path) or "(root)"
            out.append(f"{path}: {e.message}")
        return out


def definitions_for(version: str) -> dict:
    """Kubernetes' shared definitions (ObjectMeta, ...) as kubernetes-validate bundles them."""
    minor = kv.major_minor(version)
    match = [v for v in kv.all_versions() if kv.major_minor(v) == minor][-1]
    return kv.schema_contents(f"kubernetes-json-schema/v{match}-local-strict/_definitions.json", version)


def validate_builtin(obj: dict, version: str) -> list[str]:
    try:
        kv.validate(strip(obj), version, strict=True)
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.absolute_path) or "(root)"
        return [f"{path}: {e.message}"]
    except kv.SchemaNotFoundError as e:
        return [e.message]
    return []


# ------------------------------------------------------------------ references


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(field path, pod template) of every pod a workload object makes."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return [("spec.template", spec.get("template") or {})]
    if kind == "RayCluster":
        out = [("spec.headGroupSpec.template", (spec.get("headGroupSpec") or {}).get("template") or {})]
        for i, group in enumerate(spec.get("workerGroupSpecs") or []):
            out.append((f"spec.workerGroupSpecs[{i}].template", group.get("template") or {}))
        return out
    return []


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def check_references(objects: list[dict], secrets: dict[str, set[str]], problems: Problems) -> None:
    configmaps = {
        (o.get("metadata") or {}).get("name"): set((o.get("data") or {}).keys())
        for o in objects
        if o.get("kind") == "ConfigMap"
    }
    pods = []  # (object, path, template)
    for obj in objects:
        for path, template in pod_templates(obj):
            pods.append((obj, path, template))

    for obj, path, template in pods:
        where = f"{obj['__file__']} {name_of(obj)} {path}"
        labels = (template.get("metadata") or {}).get("labels") or {}
        if obj.get("kind") == "Deployment" and not selects(obj["spec"].get("selector") or {}, labels):
            problems.add(where, "spec.selector.matchLabels does not match the pod template's labels")
        claims = {(o.get("metadata") or {}).get("name") for o in objects if o.get("kind") == "PersistentVolumeClaim"}
        for volume in (template.get("spec") or {}).get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in claims:
                problems.add(where, f"volume {volume.get('name')} claims {claim}, which is not rendered")
        for c in (template.get("spec") or {}).get("containers") or []:
            cwhere = f"{where} container {c.get('name')}"
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe)
                if not p:
                    continue
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in p:
                        port = p[handler].get("port")
                        if port not in ports.values() and port not in ports:
                            problems.add(cwhere, f"{probe}.{handler}.port {port} is not a container port")
            for src in c.get("envFrom") or []:
                if "configMapRef" in src and src["configMapRef"].get("name") not in configmaps:
                    problems.add(cwhere, f"envFrom ConfigMap {src['configMapRef'].get('name')} is not rendered")
                if "secretRef" in src and src["secretRef"].get("name") not in secrets:
                    problems.add(cwhere, f"envFrom Secret {src['secretRef'].get('name')} is not in the example Secrets")
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("key") not in secrets.get(ref.get("name"), set()):
                    problems.add(
                        cwhere,
                        f"env {env.get('name')} reads key {ref.get('key')} of Secret {ref.get('name')}, "
                        "which the example Secrets do not have",
                    )
                ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                if ref and ref.get("key") not in configmaps.get(ref.get("name"), set()):
                    problems.add(cwhere, f"env {env.get('name')} reads a ConfigMap key that is not rendered")

    for obj in objects:
        kind = obj.get("kind")
        where = f"{obj['__file__']} {name_of(obj)}"
        if kind == "Service":
            selector = obj["spec"].get("selector") or {}
            matched = [t for _, _, t in pods if selects({"matchLabels": selector}, (t.get("metadata") or {}).get("labels") or {})]
            if not matched:
                problems.add(where, "spec.selector selects no pod template")
            for port in obj["spec"].get("ports") or []:
                target = port.get("targetPort")
                if isinstance(target, str) and not any(
                    target == p.get("name")
                    for t in matched
                    for c in (t.get("spec") or {}).get("containers") or []
                    for p in c.get("ports") or []
                ):
                    problems.add(where, f"targetPort {target} is no port of the selected pods")
        if kind == "PodDisruptionBudget":
            if not any(selects(obj["spec"].get("selector") or {}, (t.get("metadata") or {}).get("labels") or {}) for _, _, t in pods):
                problems.add(where, "spec.selector selects no pod template")

    rayclusters = [(o.get("metadata") or {}).get("name") for o in objects if o.get("kind") == "RayCluster"]
    for obj in objects:
        address = (obj.get("data") or {}).get("LATHE_RAY_ADDRESS") if obj.get("kind") == "ConfigMap" else None
        if address and not any(address.startswith(f"http://{rc}-head-svc:") for rc in rayclusters):
            problems.add(f"{obj['__file__']} {name_of(obj)}", f"LATHE_RAY_ADDRESS {address} names no rendered RayCluster's head service")


# ------------------------------------------------------------------ main


def check_objects(
    label: str,
    objects: list[dict],
    crd: dict[str, dict[str, CrdValidator]],
    secrets: dict[str, set[str]],
    problems: Problems,
    references: bool = True,
) -> int:
    for obj in objects:
        where = f"{obj['__file__']} {name_of(obj)}"
        if obj.get("apiVersion", "").split("/")[0] == "ray.io":
            validator = crd.get(obj.get("kind"))
            if validator is None:
                problems.add(where, "no vendored CRD schema for this kind")
                continue
            for version, v in validator.items():
                for e in v.errors(strip(obj)):
                    problems.add(where, f"{e} (KubeRay CRD, Kubernetes {kv.major_minor(version)} metadata)")
        else:
            for version in KUBERNETES_VERSIONS:
                for e in validate_builtin(obj, version):
                    problems.add(where, f"{e} (Kubernetes {kv.major_minor(version)})")
    if references:
        check_references(objects, secrets, problems)
    print(f"{label}: {len(objects)} objects: {', '.join(name_of(o) for o in objects)}")
    return len(objects)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-kubectl", action="store_true", help="do not use kubectl kustomize even where installed")
    args = parser.parse_args()
    problems = Problems()
    kubectl = None if args.no_kubectl else shutil.which("kubectl")

    crd_validators = {}
    for version in KUBERNETES_VERSIONS:
        v = CrdValidator(RAYCLUSTER_CRD, definitions_for(version))
        crd_validators.setdefault(v.kind, {})[version] = v

    secrets_docs = load_documents(SECRETS_EXAMPLE)
    for s in secrets_docs:
        s["__file__"] = str(SECRETS_EXAMPLE.relative_to(ROOT))
    secrets = {
        s["metadata"]["name"]: set((s.get("stringData") or {}).keys()) | set((s.get("data") or {}).keys())
        for s in secrets_docs
        if s.get("kind") == "Secret"
    }
    checked = check_objects("examples/secrets.example.yaml", secrets_docs, crd_validators, secrets, problems)

    base = render_base(BASE, problems)
    checked += check_objects("base (rendered by this script)", base, crd_validators, secrets, problems)
    rendered = kustomize(BASE, kubectl, problems)
    if rendered is None:
        print("no kubectl: the overlays are not rendered (the base was, by this script); their own resource files are checked")
        for overlay in sorted(p for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file()):
            objects = []
            for resource in load_documents(overlay / "kustomization.yaml")[0].get("resources", []):
                if (overlay / resource).is_file():
                    for obj in load_documents(overlay / resource):
                        obj["__file__"] = str((overlay / resource).relative_to(ROOT))
                        objects.append(obj)
            checked += check_objects(f"overlays/{overlay.name} (its own files)", objects, crd_validators, secrets, problems, references=False)
    else:
        if canonical(rendered) != canonical(base):
            problems.add("deploy/kubernetes/base", "kubectl kustomize renders other objects than this script")
        for overlay in sorted(p for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file()):
            objects = kustomize(overlay, kubectl, problems) or []
            checked += check_objects(f"overlays/{overlay.name} (kubectl kustomize)", objects, crd_validators, secrets, problems)

    for p in problems.items:
        print(f"error: {p}")
    print(f"manifests: {checked} objects checked against Kubernetes {', '.join(kv.major_minor(v) for v in KUBERNETES_VERSIONS)} "
          f"(kubernetes-validate {kubernetes_validate_version}) and KubeRay's RayCluster CRD; {len(problems.items)} problems")
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())
