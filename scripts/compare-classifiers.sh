#!/bin/sh
# compare-classifiers.sh: run Moat's classifiers, bogofilter and
# SpamAssassin's Bayes side by side on a labelled corpus with the same
# online order (moat eval --print-order), and print one table.
#
# usage: scripts/compare-classifiers.sh [CORPUS.tar.gz] [SEED]
#   MOAT=path/to/moat (default: go build ./cmd/moat)
#   SA_CHUNK=100       SpamAssassin: classify a chunk of N messages, then learn it
#   SKIP_SA=1          leave SpamAssassin out (it takes minutes)
#
# Protocol: every tool starts from an empty model and sees the messages in
# the same order; Moat and bogofilter classify each message and then learn
# it with its true label (TREC online). SpamAssassin is driven in chunks
# (see SA_CHUNK) because one spamassassin process per message is too slow.
set -eu
CORPUS=${1:-/work/shared/corpus/spamassassin-2002.tar.gz}
SEED=${2:-1}
SA_CHUNK=${SA_CHUNK:-100}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${MOAT:-}" ]; then
	MOAT=$WORK/moat
	(cd "$HERE" && go build -o "$MOAT" ./cmd/moat)
fi

mkdir -p "$WORK/corpus"
tar xf "$CORPUS" -C "$WORK/corpus" # .tar.gz or .tar (GNU tar detects it)
"$MOAT" eval --corpus "$CORPUS" --seed "$SEED" --print-order > "$WORK/order"

# auc FILE: lines "label<TAB>score" -> "AUC FP FN" at threshold $2
auc() {
	python3 - "$1" "$2" <<'PY'
import sys
rows=[l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
thr=float(sys.argv[2])
xs=sorted(((float(s),lab) for lab,s in rows), key=lambda r:r[0])
npos=sum(1 for _,l in xs if l=="spam"); nneg=len(xs)-npos
rank=0.0; i=0; rs=0.0
while i<len(xs):
    j=i
    while j<len(xs) and xs[j][0]==xs[i][0]: j+=1
    avg=(i+1+j)/2.0
    rs+=sum(avg for k in range(i,j) if xs[k][1]=="spam")
    i=j
auc=(rs-npos*(npos+1)/2.0)/(npos*nneg)
fp=sum(1 for s,l in xs if l=="ham" and s>=thr)
fn=sum(1 for s,l in xs if l=="spam" and s<thr)
print("%.4f %.3f %.3f" % ((1-auc)*100, 100.0*fp/nneg, 100.0*fn/npos))
PY
}

row() { printf '%-28s %10s %8s %8s %12s %12s\n' "$@"; }

# --- Moat (in-memory model, same order) ---
# FP/FN at Moat's default threshold, 0.95: where its bayes check alone tags.
for alg in stack logreg chi2; do
	"$MOAT" eval --corpus "$CORPUS" --seed "$SEED" --classifier "$alg" --scores "$WORK/moat-$alg.scores" > "$WORK/moat-$alg.out"
	awk -F'\t' '{print $2"\t"$3}' "$WORK/moat-$alg.scores" > "$WORK/moat-$alg.ls"
	set -- $(auc "$WORK/moat-$alg.ls" 0.95)
	c=$(awk '/^classify:/{print $2}' "$WORK/moat-$alg.out")
	l=$(awk '/^learn:/{print $2}' "$WORK/moat-$alg.out")
	echo "moat-$alg $1 $2 $3 $c $l" >> "$WORK/table"
done

# --- bogofilter: one process per classification and per lesson; -TT
# prints the spam probability at full precision (-T rounds it) ---
mkdir -p "$WORK/bogo"
: > "$WORK/bogo.ls"
tc=0; tl=0
while IFS="$(printf '\t')" read -r label name; do
	f="$WORK/corpus/$name"
	t0=$(date +%s%N)
	s=$(bogofilter -d "$WORK/bogo" -TT < "$f" 2>/dev/null | awk '{print $NF}') || true
	t1=$(date +%s%N)
	if [ "$label" = spam ]; then bogofilter -d "$WORK/bogo" -s < "$f"; else bogofilter -d "$WORK/bogo" -n < "$f"; fi
	t2=$(date +%s%N)
	tc=$((tc + t1 - t0)); tl=$((tl + t2 - t1))
	printf '%s\t%s\n' "$label" "${s:-0.5}" >> "$WORK/bogo.ls"
done < "$WORK/order"
n=$(wc -l < "$WORK/order")
set -- $(auc "$WORK/bogo.ls" 0.99)
echo "bogofilter $1 $2 $3 $(echo "$n $tc" | awk '{printf "%.0f", $1/($2/1e9)}') $(echo "$n $tl" | awk '{printf "%.0f", $1/($2/1e9)}')" >> "$WORK/table"

# --- SpamAssassin Bayes, chunked: classify SA_CHUNK messages with spamc
# (one spamd, loaded once), then sa-learn the chunk. Only the Bayes
# probability (_BAYES_ template tag) is used, not SpamAssassin's rule score.
if [ -z "${SKIP_SA:-}" ]; then
	SAHOME=$WORK/sa; mkdir -p "$SAHOME/cf" "$SAHOME/bayes"
	chmod 755 "$WORK" "$SAHOME" "$SAHOME/bayes"
	chmod -R a+rX "$WORK/corpus"
	cp /etc/spamassassin/*.pre "$SAHOME/cf/"
	cat > "$SAHOME/cf/zz_local.cf" <<CF
use_bayes 1
bayes_auto_learn 0
bayes_path $SAHOME/bayes/bayes
bayes_file_mode 0777
bayes_min_ham_num 1
bayes_min_spam_num 1
add_header all Bayes _BAYES_
skip_rbl_checks 1
use_razor2 0
use_pyzor 0
CF
	SAPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	spamd -L -x -u nobody --siteconfigpath="$SAHOME/cf" -i 127.0.0.1 -p "$SAPORT" -m 2 -r "$SAHOME/spamd.pid" -s stderr -d 2>"$SAHOME/spamd.log"
	i=0; while ! spamc -d 127.0.0.1 -p "$SAPORT" -K >/dev/null 2>&1 && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
	: > "$WORK/sa.ls"; tc=0; tl=0
	split -l "$SA_CHUNK" "$WORK/order" "$WORK/chunk."
	for ch in "$WORK"/chunk.*; do
		t0=$(date +%s%N)
		while IFS="$(printf '\t')" read -r label name; do
			s=$(spamc -d 127.0.0.1 -p "$SAPORT" < "$WORK/corpus/$name" 2>/dev/null | awk '/^X-Spam-Bayes:/{print $2; exit}')
			printf '%s\t%s\n' "$label" "${s:-0.5}" >> "$WORK/sa.ls"
		done < "$ch"
		t1=$(date +%s%N)
		grep '^spam' "$ch" | cut -f2 | sed "s|^|$WORK/corpus/|" > "$WORK/l.spam" || true
		grep '^ham' "$ch" | cut -f2 | sed "s|^|$WORK/corpus/|" > "$WORK/l.ham" || true
		if [ -s "$WORK/l.spam" ]; then sa-learn --siteconfigpath="$SAHOME/cf" --spam -f "$WORK/l.spam" >/dev/null 2>&1; fi
		if [ -s "$WORK/l.ham" ]; then sa-learn --siteconfigpath="$SAHOME/cf" --ham -f "$WORK/l.ham" >/dev/null 2>&1; fi
		chmod -R a+rwX "$SAHOME/bayes"
		t2=$(date +%s%N)
		tc=$((tc + t1 - t0)); tl=$((tl + t2 - t1))
	done
	kill "$(cat "$SAHOME/spamd.pid")" 2>/dev/null || true
	set -- $(auc "$WORK/sa.ls" 0.5)
	echo "sa-bayes(chunk=$SA_CHUNK) $1 $2 $3 $(echo "$n $tc" | awk '{printf "%.1f", $1/($2/1e9)}') $(echo "$n $tl" | awk '{printf "%.0f", $1/($2/1e9)}')" >> "$WORK/table"
fi

# --- bulk learning: the whole corpus into a fresh model, one process,
# from the same extracted files; the median of 3 runs each. Moat writes
# its SQLite database (the embedded default); bogofilter its own.
secs() { # secs CMD...: wall seconds of one run
	t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
	echo "$t0 $t1" | awk '{printf "%.3f", ($2-$1)/1e9}'
}
median3() { printf '%s\n%s\n%s\n' "$1" "$2" "$3" | sort -n | sed -n 2p; }
moat_bulk() { rm -f "$WORK/bulk.db"*; "$MOAT" learn --db "$WORK/bulk.db" --label-from-path "$WORK/corpus" -q; }
bogo_bulk() { # the messages of each class, named by the order (ham/ spam/ or a TREC index)
	rm -rf "$WORK/bogob"; mkdir -p "$WORK/bogob"
	(cd "$WORK/corpus" &&
		awk -F'\t' '$1=="spam"{print $2}' "$WORK/order" | tr '\n' '\0' | xargs -0 bogofilter -d "$WORK/bogob" -s -B &&
		awk -F'\t' '$1=="ham"{print $2}' "$WORK/order" | tr '\n' '\0' | xargs -0 bogofilter -d "$WORK/bogob" -n -B)
}
mb=$(median3 "$(secs moat_bulk)" "$(secs moat_bulk)" "$(secs moat_bulk)")
bb=$(median3 "$(secs bogo_bulk)" "$(secs bogo_bulk)" "$(secs bogo_bulk)")

echo "corpus: $CORPUS ($n messages, seed $SEED, online order of moat eval --print-order)"
row classifier "1-ROCA%" "FP%" "FN%" "classify/s" "learn/s"
while read -r a b c d e f; do row "$a" "$b" "$c" "$d" "$e" "$f"; done < "$WORK/table"
echo
echo "bulk learning, whole corpus into a fresh model (median of 3):"
printf '%-28s %8ss %10s msgs/s\n' "moat learn (stack, SQLite)" "$mb" "$(echo "$n $mb" | awk '{printf "%.0f", $1/$2}')"
printf '%-28s %8ss %10s msgs/s\n' "bogofilter -s/-n -B" "$bb" "$(echo "$n $bb" | awk '{printf "%.0f", $1/$2}')"
