package stageops

import (
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	mode := uint32(0o2750)
	ops := []Op{{Path: "/srv/a", Mkdir: true}, {Path: "/srv/a", Mode: &mode, Owner: &[2]uint32{1000, 100}}}
	got, err := Decode(Encode(ops))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ops) {
		t.Fatalf("got %+v, want %+v", got, ops)
	}
}

func TestDecodeRefuses(t *testing.T) {
	for doc, want := range map[string]string{
		`{"ops":[{"path":"srv"}]}`:             `"srv" is not a clean absolute path`,
		`{"ops":[{"path":"/srv/../etc"}]}`:     `"/srv/../etc" is not a clean`,
		`{"ops":[{"path":"/"}]}`:               `"/" is not a clean absolute path below /`,
		`{"ops":[{"path":"/a","mode":65535}]}`: `mode 177777 has bits beyond 07777`,
		`not json`:                             `staging operations: invalid character`,
		// Accepted by the old Decode; the staging directory's syscalls
		// failed on it later with a bare "invalid argument".
		`{"ops":[{"path":"/a\u0000b"}]}`: `is not a clean absolute path`,
	} {
		_, err := Decode([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Decode(%s) = %v, want an error containing %q", doc, err, want)
		}
	}
}
