#!/usr/bin/env bash
# Installs and starts what the test suite needs: real peers, no mocks.
# Safe to run repeatedly. As root, missing Debian packages are installed;
# otherwise the script only reports what is missing.
set -euo pipefail

pkgs=(postfix swaks clamav-daemon clamav p0f nftables iptables bogofilter spamassassin chromium postgresql bzip2)
bins=(postfix swaks clamd sigtool nft iptables-restore bogofilter spamassassin chromium pg_ctlcluster bzip2)
missing=()
for i in "${!bins[@]}"; do
	command -v "${bins[$i]}" >/dev/null 2>&1 || [ -x "/usr/sbin/${bins[$i]}" ] || [ -x "/usr/bin/${bins[$i]}" ] || missing+=("${pkgs[$i]}")
done
[ -f /etc/p0f/p0f.fp ] || missing+=(p0f)
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		echo "test-deps: installing ${missing[*]}" >&2
		export DEBIAN_FRONTEND=noninteractive
		# Postfix asks questions on install; answer them up front.
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections || true
		apt-get update -qq
		apt-get install -y -qq "${missing[@]}"
	else
		echo "test-deps: missing ${missing[*]} (run as root to install)" >&2
	fi
fi

# The system Postfix and clamd must not hold our test ports; tests start
# their own private instances.
if [ "$(id -u)" = 0 ]; then
	postfix stop >/dev/null 2>&1 || true
	# PostgreSQL for the scale-out store's conformance tests.
	if command -v pg_ctlcluster >/dev/null 2>&1; then
		ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
		if [ -n "$ver" ]; then
			pg_ctlcluster "$ver" main start >/dev/null 2>&1 || true
			for _ in $(seq 1 30); do
				su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
				sleep 0.5
			done
			su postgres -c "psql -qAtc \"DO \\\$\\\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='moat') THEN CREATE ROLE moat LOGIN SUPERUSER PASSWORD 'moat'; END IF; END\\\$\\\$\"" >/dev/null
			echo "MOAT_TEST_POSTGRES=postgres://moat:moat@127.0.0.1:5432/postgres?sslmode=disable"
		fi
	fi
fi
