# Sourced by the bench scripts that log their runs (bench/align_stage5.sh, bench/align_rl.sh).
# timed NAME CMD...: run CMD, its output in $W/NAME.log, and append NAME, the wall and CPU
# (user + system) seconds and the command to $RES/times.tsv.
timed() {
    local name=$1; shift
    local t0; t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$W/$name.cpu" "$@" > "$W/$name.log" 2>&1
    local wall; wall=$(echo "$(date +%s.%N) - $t0" | bc)
    read -r user sys < "$W/$name.cpu"
    printf "%s\t%.0f\t%.0f\t%s\n" "$name" "$wall" "$(echo "$user + $sys" | bc)" "$*" >> "$RES/times.tsv"
}
