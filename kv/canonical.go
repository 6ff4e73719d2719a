package kv

import "bytes"

// decodeCanonical parses a record in the exact form Encode writes: the
// fields in order, strings of printable ASCII without escapes, times as
// RFC 3339. Every subscriber decodes every rotation, so this is on the
// path whose speed is measured; anything else, valid or not, gets ok false
// and is left to encoding/json. The fuzz target checks that the two agree.
func decodeCanonical(b []byte) (r record, ok bool) {
	var fetched, expires []byte
	if b, ok = expect(b, `{"appid":"`); !ok {
		return record{}, false
	}
	var s []byte
	if s, b, ok = plainString(b); !ok {
		return record{}, false
	}
	r.AppID = string(s)
	if b, ok = expect(b, `,"access_token":"`); !ok {
		return record{}, false
	}
	if s, b, ok = plainString(b); !ok {
		return record{}, false
	}
	r.AccessToken = string(s)
	if b, ok = expect(b, `,"expires_in":`); !ok {
		return record{}, false
	}
	if r.ExpiresIn, b, ok = plainInt(b); !ok {
		return record{}, false
	}
	if b, ok = expect(b, `,"fetched_at":"`); !ok {
		return record{}, false
	}
	if fetched, b, ok = plainString(b); !ok {
		return record{}, false
	}
	if b, ok = expect(b, `,"expires_at":"`); !ok {
		return record{}, false
	}
	if expires, b, ok = plainString(b); !ok {
		return record{}, false
	}
	if rest, found := expect(b, `,"reason":"`); found {
		if s, b, ok = plainString(rest); !ok {
			return record{}, false
		}
		r.Reason = string(s)
	}
	if rest, found := expect(b, `,"api":"`); found {
		if s, b, ok = plainString(rest); !ok {
			return record{}, false
		}
		r.API = string(s)
	}
	if string(b) != "}" {
		return record{}, false
	}
	// UnmarshalText is what encoding/json uses for time.Time, strictness included.
	if r.FetchedAt.UnmarshalText(fetched) != nil || r.ExpiresAt.UnmarshalText(expires) != nil {
		return record{}, false
	}
	return r, true
}

func expect(b []byte, prefix string) ([]byte, bool) {
	if !bytes.HasPrefix(b, []byte(prefix)) {
		return b, false
	}
	return b[len(prefix):], true
}

// plainString reads the rest of a string up to its closing quote, if all
// of it is printable ASCII without escapes.
func plainString(b []byte) (s, rest []byte, ok bool) {
	for i, c := range b {
		switch {
		case c == '"':
			return b[:i], b[i+1:], true
		case c == '\\' || c < 0x20 || c > 0x7e:
			return nil, nil, false
		}
	}
	return nil, nil, false
}

// plainInt reads a JSON integer of at most 18 digits, without leading zeros.
func plainInt(b []byte) (n int64, rest []byte, ok bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	i := 0
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	if i == 0 || i > 18 || (i > 1 && b[0] == '0') {
		return 0, nil, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, nil, false
	}
	if neg {
		n = -n
	}
	return n, b[i:], true
}
