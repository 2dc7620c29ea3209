#!/usr/bin/env bash
# Restores the local tool manifest (Cake) and runs build/build.cake with the given arguments.
set -euo pipefail
cd "$(dirname "$0")"
dotnet tool restore >/dev/null
exec dotnet cake build/build.cake "$@"
