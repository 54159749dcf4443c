#!/bin/bash
# The official nginx image's 20-envsubst-on-templates.sh: each /etc/nginx/templates/X.template
# becomes /etc/nginx/conf.d/X, with only the environment variables matching
# NGINX_ENVSUBST_FILTER substituted (nginx's own $variables are left alone).
set -euo pipefail
tdir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
odir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
filter=${NGINX_ENVSUBST_FILTER:-}
if [ -d "$tdir" ]; then
  vars=$(env | cut -d= -f1 | grep -E -- "$filter" | sed 's/^/${/; s/$/}/' | tr '\n' ' ' || true)
  for t in "$tdir"/*"$suffix"; do
    [ -e "$t" ] || continue
    out="$odir/$(basename "$t" "$suffix")"
    envsubst "$vars" <"$t" >"$out"
  done
fi
exec "$@"
