package agent

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/wxtoken/wxtoken/internal/yamlfile"
	"github.com/wxtoken/wxtoken/kv"
)

// Client is a caller the agent knows by a bearer token, and the keys it
// may use ("*": every key).
type Client struct {
	Name        string
	TokenSHA256 [sha256.Size]byte // of the bearer token; the token itself is kept nowhere
	Keys        []string
	// Login is the keys whose users' login codes it may exchange ("*":
	// every key); nil: those of Keys, empty: none.
	Login []string
}

// allKeys in a Client's Keys lets it use every key.
const allKeys = "*"

// minTokenLength is the shortest bearer token an auth file may give.
const minTokenLength = 16

// LoadClients reads an auth file:
//
//	clients:
//	  - name: shop
//	    token_sha256: 9f86d081...   # hex of sha256(token); or token: "..."
//	    keys: [wx1234567890abcdef, wx1234567890abcdef.jsapi_ticket]
//	    login: [wx1234567890abcdef]  # optional; absent: the keys above
//
// Every error names the client and the field.
func LoadClients(path string) ([]Client, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	var file struct {
		Clients []struct {
			Name        string    `yaml:"name"`
			Token       string    `yaml:"token"`
			TokenSHA256 string    `yaml:"token_sha256"`
			Keys        []string  `yaml:"keys"`
			Login       *[]string `yaml:"login"`
		} `yaml:"clients"`
	}
	if err := yamlfile.Decode(path, data, &file); err != nil {
		return nil, fmt.Errorf("auth file %w", err)
	}
	if len(file.Clients) == 0 {
		return nil, fmt.Errorf("auth file %s: no clients", path)
	}
	var clients []Client
	for i, c := range file.Clients {
		where := fmt.Sprintf("auth file %s: client %d (%q)", path, i+1, c.Name)
		cl := Client{Name: c.Name, Keys: c.Keys}
		if c.Login != nil {
			cl.Login = append([]string{}, *c.Login...) // empty, not nil: no login at all
		}
		switch {
		case c.Token != "" && c.TokenSHA256 != "":
			return nil, fmt.Errorf("%s: give token or token_sha256, not both", where)
		case c.Token != "":
			if len(c.Token) < minTokenLength {
				return nil, fmt.Errorf("%s: token: at least %d characters", where, minTokenLength)
			}
			cl.TokenSHA256 = sha256.Sum256([]byte(c.Token))
		case c.TokenSHA256 != "":
			sum, err := hex.DecodeString(c.TokenSHA256)
			if err != nil || len(sum) != sha256.Size {
				return nil, fmt.Errorf("%s: token_sha256: 64 hex digits, as `printf %%s TOKEN | sha256sum` prints", where)
			}
			copy(cl.TokenSHA256[:], sum)
		default:
			return nil, fmt.Errorf("%s: token or token_sha256 is required", where)
		}
		clients = append(clients, cl)
	}
	if _, err := newClientSet(clients); err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	return clients, nil
}

// clientSet is who may call; nil lets anyone use every key.
type clientSet struct {
	clients []Client
}

func newClientSet(clients []Client) (*clientSet, error) {
	if len(clients) == 0 {
		return nil, nil
	}
	names := map[string]bool{}
	tokens := map[[sha256.Size]byte]bool{}
	for i, c := range clients {
		where := fmt.Sprintf("client %d (%q)", i+1, c.Name)
		switch {
		case c.Name == "":
			return nil, fmt.Errorf("%s: name is required", where)
		case names[c.Name]:
			return nil, fmt.Errorf("%s: the name is taken by another client", where)
		case tokens[c.TokenSHA256]:
			return nil, fmt.Errorf("%s: the token is another client's too", where)
		case len(c.Keys) == 0:
			return nil, fmt.Errorf("%s: keys: name the keys it may use, or \"*\"", where)
		}
		names[c.Name], tokens[c.TokenSHA256] = true, true
		for _, key := range c.Keys {
			if key == allKeys {
				continue
			}
			if err := kv.ValidateKey(key); err != nil {
				return nil, fmt.Errorf("%s: keys: %w", where, err)
			}
		}
		for _, key := range c.Login {
			if key == allKeys {
				continue
			}
			if _, kind := kv.SplitKey(key); kv.ValidateKey(key) != nil || kind != kv.KindToken {
				return nil, fmt.Errorf("%s: login: %.80q is not an appid", where, key)
			}
		}
	}
	return &clientSet{clients: clients}, nil
}

// caller is who sent a request: nil when the agent has no clients.
type caller struct{ client *Client }

// may reports whether the caller may use key.
func (c caller) may(key string) bool {
	return c.client == nil || slices.Contains(c.client.Keys, allKeys) || slices.Contains(c.client.Keys, key)
}

// mayLogin reports whether the caller may exchange login codes of key.
func (c caller) mayLogin(key string) bool {
	if c.client == nil || c.client.Login == nil {
		return c.may(key)
	}
	return slices.Contains(c.client.Login, allKeys) || slices.Contains(c.client.Login, key)
}

// name is the caller's name in a log line: the client's, or its address
// when the agent has no clients.
func (c caller) name(r *http.Request) string {
	if c.client != nil {
		return c.client.Name
	}
	return "an unnamed client at " + r.RemoteAddr
}

// identify returns the request's caller; ok is false when the agent has
// clients and the request names none of them.
func (cs *clientSet) identify(r *http.Request) (c caller, ok bool) {
	if cs == nil {
		return caller{}, true
	}
	token := bearer(r)
	if token == "" {
		return caller{}, false
	}
	sum := sha256.Sum256([]byte(token))
	var found *Client
	for i := range cs.clients {
		// Every client is compared, in constant time: how long it takes
		// says nothing of which token came close.
		if subtle.ConstantTimeCompare(sum[:], cs.clients[i].TokenSHA256[:]) == 1 {
			found = &cs.clients[i]
		}
	}
	return caller{client: found}, found != nil
}

// bearer returns the request's token: "Authorization: Bearer TOKEN", or
// HTTP Basic with the token as the password (for base URLs such as
// https://shop:TOKEN@agent.example/).
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if scheme, token, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(token)
	}
	if _, password, ok := r.BasicAuth(); ok {
		return password
	}
	return ""
}
