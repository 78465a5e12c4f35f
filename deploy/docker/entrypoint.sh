#!/bin/sh
# The image's entrypoint: secrets given as files (Docker and Compose secrets, Kubernetes secret volumes)
# become the variables llmhost reads, then the command runs in this process's place.
#
#   LLMHOST_API_KEY_FILE=/run/secrets/llmhost_api_key       -> LLMHOST_API_KEY
#   LLMHOST_DATABASE_URL_FILE=/run/secrets/database_url     -> LLMHOST_DATABASE_URL
#
# Giving both a variable and its _FILE is refused: which one wins would be a guess.
set -eu

for var in LLMHOST_API_KEY LLMHOST_DATABASE_URL; do
    eval "file=\${${var}_FILE:-}"
    [ -n "$file" ] || continue
    eval "direct=\${${var}:-}"
    if [ -n "$direct" ]; then
        echo "llmhost-entrypoint: both $var and ${var}_FILE are set; give one of them" >&2
        exit 64
    fi
    if [ ! -f "$file" ] || [ ! -r "$file" ]; then
        echo "llmhost-entrypoint: ${var}_FILE=$file is not a readable file" >&2
        exit 66
    fi
    # $(...) drops the trailing newline that `echo key > file` leaves.
    value="$(cat "$file")"
    if [ -z "$value" ]; then
        echo "llmhost-entrypoint: ${var}_FILE=$file is empty" >&2
        exit 65
    fi
    export "$var=$value"
    unset "${var}_FILE"
done

if [ "$#" -eq 0 ]; then
    set -- llmhost serve --host 0.0.0.0
fi
exec "$@"
