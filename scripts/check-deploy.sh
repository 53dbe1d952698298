#!/usr/bin/env bash
# Checks the deployment files offline, as the suite runs it (scripts/test.sh):
#
# 1. renders every overlay of deploy/kubernetes/overlays with kustomize
#    (`kubectl kustomize`, or the `kustomize` binary where kubectl is absent);
# 2. validates every rendered object strictly against the Kubernetes API's
#    schemas and KEDA's (npm: kubernetes-models, @kubernetes-models/keda;
#    unknown fields caught by TypeScript's check against the same packages'
#    types), plus this repository's rules: KEDA's maxReplicaCount is the
#    input topic's partition count (config/topics.txt), its consumer group
#    the stage's, probes on /readyz and /healthz at the port the service
#    listens on, resources set, no service links
#    (scripts/deploy-check/validate.mjs);
# 3. validates docker-compose.yml with `docker compose config -q` (or
#    Debian's `docker-compose`);
#
# then proves, on deliberately broken copies in a temporary directory, that
# a typo (an unknown field, a wrong type) in a manifest or in
# docker-compose.yml fails the check.
#
# Installs what it needs the first time: the npm packages of
# scripts/deploy-check/package-lock.json into .postback/deploy-check (with
# the machine's npm), and, when root, Debian's docker-compose (and nodejs,
# npm) with apt-get as in CI. A missing tool it cannot install stops it with
# the package that provides it; nothing is skipped.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
started=$SECONDS

DC="$STATE/deploy-check"
KUSTOMIZE_VERSION=v5.5.0

is_root() { [[ "$(id -u)" == 0 ]]; }
# Installs Debian packages when this is root on a machine with apt-get.
apt_install() {
  is_root && command -v apt-get >/dev/null 2>&1 || return 1
  say "installing $* (Debian packages)"
  apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

# ---- the tools -------------------------------------------------------------
# kustomize v5: kubectl's own (kubectl >= 1.27), else a kustomize binary,
# else one built from the Go module proxy where Go is installed.
render_cmd=()
kubectl_kustomize() {
  command -v kubectl >/dev/null 2>&1 || return 1
  local v
  v="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}\([0-9]*\).*/\1/p')"
  if [[ -z "$v" || "$v" -lt 5 ]]; then
    say "$(command -v kubectl) has no kustomize v5 (kubectl >= 1.27 has); looking for a kustomize binary"
    return 1
  fi
}
if kubectl_kustomize; then
  render_cmd=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  render_cmd=(kustomize build)
elif [[ -x "$STATE/bin/kustomize" ]]; then
  render_cmd=("$STATE/bin/kustomize" build)
elif command -v go >/dev/null 2>&1; then
  say "no kubectl with kustomize v5 and no kustomize binary: building kustomize $KUSTOMIZE_VERSION from the Go module proxy into $STATE/bin (first time only)"
  GOBIN="$STATE/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" ||
    die "could not build kustomize; install kubectl >= 1.27 (package kubectl of the Kubernetes apt repository) or kustomize v5"
  render_cmd=("$STATE/bin/kustomize" build)
else
  die "rendering the Kubernetes overlays needs kubectl >= 1.27 (package kubectl of the Kubernetes apt repository; Debian's own kubernetes-client is too old) or kustomize v5 (go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION, with Go: Debian golang-go)"
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  { apt_install nodejs npm && command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; } ||
    die "validating the manifests needs node and npm (Debian: apt-get install nodejs npm)"
fi
# The validator's packages, exactly as locked; reinstalled when the lock changes.
if ! cmp -s scripts/deploy-check/package-lock.json "$DC/package-lock.json" || [[ ! -d "$DC/node_modules" ]]; then
  say "installing the manifest validator's npm packages into $DC (first time only)"
  mkdir -p "$DC"
  cp scripts/deploy-check/package.json scripts/deploy-check/package-lock.json "$DC/"
  (cd "$DC" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
    { rm -f "$DC/package-lock.json"; die "npm could not install scripts/deploy-check/package-lock.json (kubernetes-models, @kubernetes-models/keda, typescript, yaml) from the npm registry"; }
fi

compose_cmd=()
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
elif apt_install docker-compose && command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  die "checking docker-compose.yml needs Docker's compose plugin (docker compose) or docker-compose (Debian: apt-get install docker-compose)"
fi

if [[ "${render_cmd[0]}" == kubectl ]]; then
  kustomize_version="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')"
elif [[ "${render_cmd[0]}" == "$STATE/bin/kustomize" ]]; then
  kustomize_version="$KUSTOMIZE_VERSION"
else
  kustomize_version="$("${render_cmd[0]}" version 2>/dev/null | head -1)"
fi
packages="$(cd "$DC" && node -e '
  const l = require("./package-lock.json").packages;
  console.log(Object.keys(require("./package.json").dependencies).map((p) => `${p} ${l["node_modules/" + p].version}`).join(", "));')"
say "deploy check: ${render_cmd[*]} (kustomize ${kustomize_version:-?}), node $(node --version), $packages, ${compose_cmd[*]} $("${compose_cmd[@]}" version --short 2>/dev/null)"

run="$(mktemp -d "$DC/run.XXXXXX")"
trap 'rm -rf "$run"' EXIT

# Renders every overlay of the deploy/kubernetes tree at $1 into $2/<name>.yaml;
# `rendered` is then the validator's LABEL=FILE arguments.
rendered=()
render_overlays() {
  local tree="$1" out="$2" dir name
  rendered=()
  mkdir -p "$out"
  for dir in "$tree"/overlays/*/; do
    name="$(basename "$dir")"
    [[ -f "$dir/kustomization.yaml" ]] || continue
    "${render_cmd[@]}" "$dir" >"$out/$name.yaml" 2>"$out/$name.err" ||
      { cat "$out/$name.err" >&2; die "kustomize could not render ${dir%/}"; }
    rendered+=("overlays/$name=$out/$name.yaml")
  done
  [[ ${#rendered[@]} -gt 0 ]] || die "no overlay in $tree/overlays"
}
validate() {
  node scripts/deploy-check/validate.mjs --modules "$DC/node_modules" --work "$run/work" \
    --topics config/topics.txt "$@"
}

# ---- 1 and 2: the overlays -------------------------------------------------
say "rendering and validating deploy/kubernetes/overlays"
render_overlays deploy/kubernetes "$run/rendered"
validate "${rendered[@]}" || die "the Kubernetes manifests are not valid (above)"

# ---- 3: docker-compose.yml -------------------------------------------------
say "validating docker-compose.yml (${compose_cmd[*]} config -q)"
"${compose_cmd[@]}" -f docker-compose.yml config -q || die "docker-compose.yml is not valid (above)"

# ---- the self-test: typos must fail ----------------------------------------
say "self-test: broken copies must fail"
cp -r deploy/kubernetes "$run/broken"
cp docker-compose.yml "$run/broken/docker-compose.yml"
python3 - "$run/broken" <<'PY'
import sys
root = sys.argv[1]
def once(path, old, new, after=None):
    p = f"{root}/{path}"
    s = open(p).read()
    at = s.index(after) if after else 0
    assert old in s[at:], f"self-test: {old!r} not in {path}: update scripts/check-deploy.sh"
    open(p, "w").write(s[:at] + s[at:].replace(old, new, 1))
# An unknown field and a wrong type, in a core kind and in KEDA's kinds.
once("base/enricher.yaml", "port: ops }, periodSeconds: 5", "port: ops }, periodSecond: 5")
once("base/collector.yaml", "minReplicas: 2", "minReplicas: two")
once("components/keda/scaledobjects.yaml", "maxReplicaCount: 6", "maxReplicaCounts: 6")
once("components/keda/scaledobjects.yaml", 'lagThreshold: "20000"', "lagThreshold: 20000")
once("overlays/production/keda-kafka-auth.yaml", "parameter: password", "parametr: password")
once("components/podmonitor/podmonitor.yaml", "targetLabel: instance", "targetLable: instance")
# The rules: a ceiling above the partition count, service links left on,
# probes on a port the service does not listen on.
once("components/keda/scaledobjects.yaml", "maxReplicaCount: 6", "maxReplicaCount: 12", after="name: postback-dispatcher-tiktok")
once("base/dispatchers.yaml", "      enableServiceLinks: false  # (collector.yaml says why)\n", "")
once("base/deduplicator.yaml", "ports: [{ containerPort: 9093, name: ops }]", "ports: [{ containerPort: 9095, name: ops }]")
once("docker-compose.yml", "    restart: on-failure", "    restartt: on-failure")
PY
render_overlays "$run/broken" "$run/broken-rendered"
if validate "${rendered[@]}" >"$run/broken.out" 2>&1; then
  cat "$run/broken.out" >&2
  die "self-test: the broken manifests passed the check"
fi
expected=(
  "Deployment/postback-enricher: spec.template.spec.containers[0].readinessProbe.periodSecond: Object literal may only specify known properties"
  "HorizontalPodAutoscaler/postback-collector: spec.minReplicas: must be integer"
  "ScaledObject/postback-enricher: spec.maxReplicaCounts: Object literal may only specify known properties"
  "ScaledObject/postback-dispatcher-meta: spec.triggers[0].metadata.lagThreshold: must be string"
  "TriggerAuthentication/postback-kafka-sasl: spec.secretTargetRef[1].parametr: Object literal may only specify known properties"
  "PodMonitor/postback: spec.podMetricsEndpoints[0].relabelings[2].targetLable: Object literal may only specify known properties"
  "ScaledObject/postback-dispatcher-tiktok: spec.maxReplicaCount: is 12, but dispatch.tiktok has 6 partitions"
  "Deployment/postback-dispatcher-meta: spec.template.spec.enableServiceLinks: must be false"
  "StatefulSet/postback-deduplicator: spec.template.spec.containers[0].readinessProbe.httpGet.port: is 9095, but postback-deduplicator listens on 9093"
)
for e in "${expected[@]}"; do
  grep -qF -- "$e" "$run/broken.out" || { cat "$run/broken.out" >&2; die "self-test: no error for: $e"; }
done
# Nothing else may be reported: every error names an object that was broken.
if grep '^error: ' "$run/broken.out" | grep -vE ': (Deployment/postback-enricher|HorizontalPodAutoscaler/postback-collector|ScaledObject/postback-(enricher|dispatcher-meta|dispatcher-tiktok)|TriggerAuthentication/postback-kafka-sasl|PodMonitor/postback|Deployment/postback-dispatcher-meta|StatefulSet/postback-deduplicator): '; then
  die "self-test: errors above name objects that were not broken"
fi
if "${compose_cmd[@]}" -f "$run/broken/docker-compose.yml" config -q >"$run/compose.out" 2>&1; then
  die "self-test: the broken docker-compose.yml passed the check"
fi
grep -q restartt "$run/compose.out" || { cat "$run/compose.out" >&2; die "self-test: docker compose did not name the unknown key"; }
say "self-test passed: ${#expected[@]} manifest typos and rule breaks, 1 docker-compose.yml typo, each reported"

say "deployment files checked in $((SECONDS - started)) s"
