# The chart of docs/benchmarks.md, drawn by bench/run:
#   gnuplot -e "datafile='...'; outfile='...'; c1='16'; c2='128'" bench/chart.gp
# datafile: a header line, then per peer: "label" rps@c1 rps@c2 p99ms@c1 p99ms@c2

set terminal pngcairo size 1000,760 font "sans,10"
set output outfile
set datafile separator whitespace

set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top right
set grid ytics
set xtics nomirror scale 0 font "sans,9"
set ytics nomirror
set format y "%.0s%c"

set multiplot layout 2,1 title "GET /get/k: one worker or thread each, loopback (make bench)" font "sans,12"

set title "Throughput (requests/s; redis-benchmark: commands/s)"
set ylabel "requests/s"
set yrange [0:*]
plot datafile using 2:xtic(1) title "c".c1 lc rgb "#4477aa", \
     ''       using 3 title "c".c2 lc rgb "#ee6677"

set title "p99 latency (ms, lower is better)"
set ylabel "ms"
set format y "%g"
plot datafile using 4:xtic(1) title "c".c1 lc rgb "#4477aa", \
     ''       using 5 title "c".c2 lc rgb "#ee6677"

unset multiplot
