#!/bin/bash
# Blue-green release of a new tabserve image on Cloud Run.
#
#   deploy/cloudrun/bluegreen.sh --project P --region R --image IMAGE [--service tabserve] [--tag TAG]
#       [--steps "10 50 100"] [--bake SECONDS] [--max-error-rate 0.01] [--min-requests 50] [--no-auth]
#       [--dry-run]
#
# 1. find the revision that serves 100 % now (blue);
# 2. deploy IMAGE as a new revision SERVICE-TAG with no traffic and the tag TAG (green);
# 3. smoke-test green through its tag URL: GET /ready = 200 and a known co2 prediction (deploy/smoke/co2.json)
#    answered 200 by the co2 model with a numeric prediction and interval;
# 4. shift traffic 10 -> 50 -> 100 %; after each step wait --bake seconds and read green's request logs:
#    a 5xx ratio above --max-error-rate (with at least --min-requests requests) fails the step;
# 5. any failure rolls back: all traffic to blue, the tag removed; exit 1.
# --dry-run prints every gcloud (and curl) command without running it; BLUEGREEN_SIMULATE_FAILURE=smoke|<step %>
# makes that check fail in a dry run (tests/test_deploy_bluegreen.py checks both sequences).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project="" region="" image="" service=tabserve tag="" steps="10 50 100" bake=120
max_error_rate=0.01 min_requests=50 auth=1 dry_run=0
simulate=${BLUEGREEN_SIMULATE_FAILURE:-}

usage() { sed -n '2,18p' "$0"; }
while [ $# -gt 0 ]; do
  case $1 in
    --project) project=$2; shift 2 ;;
    --region) region=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --service) service=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --bake) bake=$2; shift 2 ;;
    --max-error-rate) max_error_rate=$2; shift 2 ;;
    --min-requests) min_requests=$2; shift 2 ;;
    --no-auth) auth=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bluegreen: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$project" ] && [ -n "$region" ] && [ -n "$image" ] || { usage >&2; exit 2; }
if [ -z "$tag" ]; then
  tag="g$(date -u +%Y%m%d-%H%M%S)"
fi
if ! [[ $tag =~ ^[a-z][a-z0-9-]{0,45}$ ]]; then
  echo "bluegreen: --tag must be lower-case letters, digits and '-', starting with a letter" >&2
  exit 2
fi
if [ -n "$simulate" ] && [ "$dry_run" = 0 ]; then
  echo "bluegreen: BLUEGREEN_SIMULATE_FAILURE only applies to --dry-run" >&2
  exit 2
fi
green="$service-$tag"
where=(--region "$region" --project "$project")

say() { printf '[bluegreen] %s\n' "$*" >&2; }
show() {  # a command on stderr, quoted only where the shell needs it (copy-paste safe)
  local arg out="+"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=" $arg"
    elif [[ $arg != *\'* ]]; then out+=" '$arg'"
    else out+=" $(printf '%q' "$arg")"; fi
  done
  printf '%s\n' "$out" >&2
}
# print a command; run it unless --dry-run
run() {
  show "$@"
  if [ "$dry_run" = 0 ]; then "$@"; fi
}
# print a command; run it and print its output, or print the placeholder (first argument) in a dry run
capture() {
  local placeholder=$1
  shift
  show "$@"
  if [ "$dry_run" = 1 ]; then printf '%s\n' "$placeholder"; else "$@"; fi
}
json_get() {  # json_get EXPRESSION: evaluate a Python expression over the JSON document `d` read from stdin
  python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"
}

rolled_back=0
rollback() {
  local reason=$1
  say "FAILED: $reason"
  if [ "$rolled_back" = 0 ]; then
    rolled_back=1
    say "rolling back: all traffic to $blue, removing tag $tag"
    run gcloud run services update-traffic "$service" "${where[@]}" --to-revisions "$blue=100" --quiet
    run gcloud run services update-traffic "$service" "${where[@]}" --remove-tags "$tag" --quiet
  fi
  say "rolled back to $blue; $green stays deployed (no traffic) for inspection"
  exit 1
}

# ---- 1. blue: the revision serving 100 % now
blue=$(capture "$service-blue" gcloud run services describe "$service" "${where[@]}" --format=json \
  | { if [ "$dry_run" = 1 ]; then cat; else json_get \
      "next(t['revisionName'] for t in d['status']['traffic'] if t.get('percent') == 100 and t.get('revisionName'))"; fi; })
say "blue (serving 100 %): $blue; green: $green ($image)"

# ---- 2. green: new revision, no traffic, tagged
run gcloud run deploy "$service" "${where[@]}" --image "$image" --no-traffic --tag "$tag" \
  --revision-suffix "$tag" --quiet
url=$(capture "https://$tag---$service-xxxxxxxxxx-$region.a.run.app" \
  gcloud run services describe "$service" "${where[@]}" --format=json \
  | { if [ "$dry_run" = 1 ]; then cat; else json_get \
      "next(t['url'] for t in d['status']['traffic'] if t.get('tag') == '$tag')"; fi; })
say "green URL: $url"

# ---- 3. smoke test through the tag URL
headers=(-H "Content-Type: application/json")
if [ "$auth" = 1 ]; then
  token=$(capture "DRY-RUN-TOKEN" gcloud auth print-identity-token)
  headers+=(-H "Authorization: Bearer $token")
fi
smoke() {
  local ready body
  show curl -fsS "$url/ready"
  show curl -fsS -X POST --data "@$here/../smoke/co2.json" "$url/predict"
  if [ "$dry_run" = 1 ]; then
    [ "$simulate" != smoke ]
    return
  fi
  ready=$(curl -fsS -o /dev/null -w '%{http_code}' --max-time 10 "${headers[@]}" "$url/ready") || return 1
  [ "$ready" = 200 ] || return 1
  body=$(curl -fsS --max-time 10 "${headers[@]}" -X POST --data "@$here/../smoke/co2.json" "$url/predict") || return 1
  printf '%s' "$body" | json_get \
    "'ok' if d['model']['name'] == 'co2' and isinstance(d['prediction'], (int, float)) and 'interval' in d else sys.exit(1)" \
    >/dev/null || return 1
  say "smoke prediction: $(printf '%s' "$body" | json_get "d['prediction'], d['model']['version']")"
}
smoke || rollback "smoke test of $url"

# ---- 4. shift traffic in steps, checking green's error rate after each
for pct in $steps; do
  since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  if [ "$pct" -ge 100 ]; then
    run gcloud run services update-traffic "$service" "${where[@]}" --to-revisions "$green=100" --quiet
  else
    run gcloud run services update-traffic "$service" "${where[@]}" --to-revisions "$green=$pct,$blue=$((100 - pct))" --quiet
  fi
  run sleep "$bake"
  filter="logName=\"projects/$project/logs/run.googleapis.com%2Frequests\" AND resource.type=\"cloud_run_revision\""
  filter+=" AND resource.labels.service_name=\"$service\" AND resource.labels.revision_name=\"$green\""
  filter+=" AND timestamp>=\"$since\""
  if [ "$simulate" = "$pct" ]; then placeholder=$(printf '503\n%.0s' $(seq 1 100)); else placeholder=$(printf '200\n%.0s' $(seq 1 100)); fi
  statuses=$(capture "$placeholder" gcloud logging read "$filter" --project "$project" \
    --format='value(httpRequest.status)' --limit 100000)
  total=$(printf '%s\n' "$statuses" | grep -c '[0-9]' || true)
  errors=$(printf '%s\n' "$statuses" | grep -c '^5' || true)
  say "step $pct %: $errors of $total green requests answered 5xx"
  if [ "$total" -lt "$min_requests" ]; then
    say "step $pct %: fewer than $min_requests requests in ${bake}s, error rate not judged"
  elif awk -v e="$errors" -v t="$total" -v m="$max_error_rate" 'BEGIN { exit !(e / t > m) }'; then
    rollback "5xx ratio $errors/$total above $max_error_rate at $pct %"
  fi
done

say "done: $green serves 100 %. Roll back with:"
say "  gcloud run services update-traffic $service --region $region --project $project --to-revisions $blue=100"
