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
