CREATE TABLE domains (
	name           TEXT PRIMARY KEY,
	partner        TEXT NOT NULL DEFAULT '',
	backends       TEXT NOT NULL DEFAULT '[]',
	tls            TEXT NOT NULL DEFAULT 'opportunistic',
	max_conns      INTEGER NOT NULL DEFAULT 0,
	recipient_mode TEXT NOT NULL DEFAULT 'any',
	catch_all      INTEGER NOT NULL DEFAULT 0,
	policy         TEXT NOT NULL DEFAULT ''
);
CREATE TABLE recipients (
	domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
	local  TEXT NOT NULL,
	kind   TEXT NOT NULL DEFAULT 'account',
	target TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (domain, local)
);
