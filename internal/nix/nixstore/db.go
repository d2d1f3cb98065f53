package nixstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	_ "github.com/ncruces/go-sqlite3/driver" // database/sql driver "sqlite3", pure Go (SQLite translated to Go)
)

// DBPath is where a system's Nix database lives, relative to its root.
const DBPath = "nix/var/nix/db/db.sqlite"

// schemaVersion is the Nix database schema the writer makes: version 10,
// Nix's since 2.0 (2018). A newer Nix migrates it when it opens it.
const schemaVersion = "10"

// reservedSize is the size of db/reserved, the space Nix sets aside so a
// full disk can still be garbage-collected (gc-reserved-space's default).
const reservedSize = 8 << 20

// schema is the database nix-store --load-db leaves (Nix 2.8's, without
// the ca-derivations tables an experimental feature adds): the same tables,
// columns, keys, indexes and trigger, so Nix reads it as its own.
var schema = []string{
	`CREATE TABLE ValidPaths (
  id               integer primary key autoincrement not null,
  path             text unique not null,
  hash             text not null,
  registrationTime integer not null,
  deriver          text,
  narSize          integer,
  ultimate         integer,
  sigs             text,
  ca               text
)`,
	`CREATE TABLE Refs (
  referrer  integer not null,
  reference integer not null,
  primary key (referrer, reference),
  foreign key (referrer) references ValidPaths(id) on delete cascade,
  foreign key (reference) references ValidPaths(id) on delete restrict
)`,
	`CREATE TABLE DerivationOutputs (
  drv  integer not null,
  id   text not null,
  path text not null,
  primary key (drv, id),
  foreign key (drv) references ValidPaths(id) on delete cascade
)`,
	`CREATE INDEX IndexReferrer on Refs(referrer)`,
	`CREATE INDEX IndexReference on Refs(reference)`,
	`CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path)`,
	// A path may refer to itself: that row goes first, so deleting the
	// path does not trip the restrict on reference.
	`CREATE TRIGGER DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end`,
}

// DBWriter makes the Nix database that nixos-install leaves in a new
// system's root, and the state directory around it, in Go (SQLite through
// ncruces/go-sqlite3, which costs the plugin's every build about 1 MiB of
// memory where modernc.org/sqlite cost 6: its globals are what the garbage
// collector scans): the host needs
// neither nix-store nor sqlite3, and the bytes depend on the closure and
// the registration time alone. What it writes is what nix-store --load-db
// writes from the same registration (nix-store --dump-db gives it back).
type DBWriter struct{}

// Write registers infos in a new database under root (root/nix/var/nix/...),
// with every path's registrationTime set to regTime.
func (DBWriter) Write(ctx context.Context, root string, infos []PathInfo, regTime int64) error {
	sorted, hashes, err := checkRegistration(infos)
	if err != nil {
		return err
	}
	ids := make(map[string]int64, len(sorted))
	for i, in := range sorted {
		ids[in.Path] = int64(i + 1)
	}
	for _, in := range sorted {
		for _, r := range in.References {
			if _, ok := ids[r]; !ok {
				return fmt.Errorf("registration: %s references %s, which is not in the closure", in.Path, r)
			}
		}
	}
	if err := makeStateDirs(root); err != nil {
		return err
	}
	path := filepath.Join(root, DBPath)
	if err := writeDB(ctx, path, sorted, hashes, ids, regTime); err != nil {
		os.Remove(path)
		return fmt.Errorf("writing the Nix database %s: %w", path, err)
	}
	return nil
}

// makeStateDirs lays out root/nix/var/nix as a new Nix store leaves it.
func makeStateDirs(root string) error {
	nv := filepath.Join(root, "nix", "var", "nix")
	for _, d := range []string{"db", "temproots", "profiles/per-user/root", "gcroots/per-user/root"} {
		if err := os.MkdirAll(filepath.Join(nv, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "nix", "store", ".links"), 0o755); err != nil {
		return err
	}
	if err := os.Symlink("/nix/var/nix/profiles", filepath.Join(nv, "gcroots", "profiles")); err != nil {
		return err
	}
	db := filepath.Join(nv, "db")
	for _, f := range []struct {
		name string
		mode os.FileMode
		data []byte
	}{
		{"schema", 0o644, []byte(schemaVersion)},
		{"big-lock", 0o600, nil},
		{"reserved", 0o600, make([]byte, reservedSize)},
	} {
		if err := writeNew(filepath.Join(db, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeNew writes a file that must not exist yet, with exactly mode.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil { // past the umask
		f.Close()
		return err
	}
	_, err = f.Write(data)
	return errors.Join(err, f.Close())
}

func writeDB(ctx context.Context, path string, sorted []PathInfo, hashes []string, ids map[string]int64, regTime int64) (err error) {
	if _, err := os.Lstat(path); err == nil {
		return errors.New("it exists already")
	}
	// WAL is the journal mode Nix leaves its database in; a clean close
	// folds the log back into the file and removes it.
	db, err := sql.Open("sqlite3", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, db.Close()) }()
	db.SetMaxOpenConns(1)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, s := range schema {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", strings.SplitN(s, "\n", 2)[0], err)
		}
	}
	addPath, err := tx.PrepareContext(ctx, "INSERT INTO ValidPaths (id, path, hash, registrationTime, deriver, narSize) VALUES (?, ?, ?, ?, ?, ?)")
	if err != nil {
		return err
	}
	for i, in := range sorted {
		var deriver any // NULL, as nix-store leaves a path without one
		if in.Deriver != "" {
			deriver = in.Deriver
		}
		if _, err := addPath.ExecContext(ctx, ids[in.Path], in.Path, hashes[i], regTime, deriver, in.NarSize); err != nil {
			return fmt.Errorf("%s: %w", in.Path, err)
		}
	}
	addRef, err := tx.PrepareContext(ctx, "INSERT OR IGNORE INTO Refs (referrer, reference) VALUES (?, ?)")
	if err != nil {
		return err
	}
	for _, in := range sorted {
		for _, r := range in.References {
			if _, err := addRef.ExecContext(ctx, ids[in.Path], ids[r]); err != nil {
				return fmt.Errorf("%s -> %s: %w", in.Path, r, err)
			}
		}
	}
	return tx.Commit()
}
