# Shared by the launchers: with DRY_RUN=1 print the command (shell-quoted where needed), else run it.
print_command() {
    local arg out=()
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then out+=("$arg"); else out+=("$(printf '%q' "$arg")"); fi
    done
    echo "${out[*]}"
}

run_or_print() {
    if [ "${DRY_RUN:-0}" = "1" ]; then
        print_command "$@"
    else
        "$@"
    fi
}

# help_if_asked SCRIPT LAST_HELP_LINE MIN_ARGS "$@": print the script's header comment (lines 2..LAST_HELP_LINE)
# and exit when called with -h/--help or with fewer than MIN_ARGS arguments.
help_if_asked() {
    local script=$1 last=$2 needed=$3
    shift 3
    if [ $# -lt "$needed" ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
        sed -n "2,${last}s/^# \{0,1\}//p" "$script"
        exit 0
    fi
}
