package publisher

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/wxtoken/wxtoken/internal/yamlfile"
	"github.com/wxtoken/wxtoken/kv"
	"github.com/wxtoken/wxtoken/publisher/internal/platform"
)

// App is one WeChat app the refresher keeps a token for: an official
// account or mini program (AppID), or a WeCom app secret (CorpID and
// Agent).
type App struct {
	AppID string
	// CorpID and Agent name a WeCom app secret instead of AppID: Agent is
	// the agentid, or a name for a secret of no agent ("contacts"). Its
	// key is "<corpid>-<agent>".
	CorpID, Agent string
	Secret        Secret
	// TokenAPI is the API an official account's token is fetched with;
	// TokenAPIClassic when empty. WeCom has one: gettoken.
	TokenAPI TokenAPI
	// Tickets are the JS-SDK tickets kept beside the token, each under
	// the key "<key>.<kind>": TicketJSAPI and TicketWxCard for an official
	// account, TicketJSAPI (the corp's) and TicketAgentConfig for WeCom.
	Tickets []Ticket
	// Platform makes the app a third-party platform (开放平台): AppID is
	// its component appid, Secret its component appsecret, and its token
	// the component_access_token, under the component appid. The tokens
	// of the accounts that authorized it are kept under their appids.
	Platform *Platform

	// secretFrom is where Secret was read (the apps file or the
	// environment), for a secret set at run time (secretset.go).
	secretFrom secretSource
}

// Platform is what a third-party platform's pushes are checked and
// decrypted with: the message token and EncodingAESKey of its
// authorization-event URL.
type Platform struct {
	MessageToken   Secret
	EncodingAESKey Secret
}

// Key is the app's token key in the bucket.
func (a App) Key() string {
	if a.CorpID != "" {
		return kv.WeComKey(a.CorpID, a.Agent)
	}
	return a.AppID
}

// wecom reports whether the app is a WeCom app secret.
func (a App) wecom() bool { return a.CorpID != "" }

// platform reports whether the app is a third-party platform.
func (a App) platform() bool { return a.Platform != nil }

// hasPlatforms reports whether any of apps is a third-party platform.
func hasPlatforms(apps []App) bool {
	return slices.ContainsFunc(apps, App.platform)
}

// api names the API the app's token is fetched with: a reload that
// changes it gives the app another source.
func (a App) api() string {
	switch {
	case a.platform():
		return "component"
	case a.wecom():
		return "wecom"
	}
	return string(a.TokenAPI.orClassic())
}

// check reports whether the message token and EncodingAESKey can check and
// decrypt pushes, without quoting either.
func (p *Platform) check() error {
	if p.MessageToken.IsZero() {
		return errors.New("a platform needs its message token (message_token)")
	}
	_, err := platform.Crypter(platform.Platform{AppID: "wx0000000000000000", MessageToken: p.MessageToken, EncodingAESKey: p.EncodingAESKey})
	return err
}

// Ticket names a ticket kind of the apps file's tickets list.
type Ticket string

const (
	TicketJSAPI       Ticket = "jsapi"        // the jsapi_ticket that signs wx.config (WeCom: the corp's)
	TicketWxCard      Ticket = "wx_card"      // the card api_ticket (卡券)
	TicketAgentConfig Ticket = "agent_config" // WeCom: the app's ticket that signs wx.agentConfig
)

// kind is the ticket's kind of key, as kv names it.
func (t Ticket) kind() string { return string(t) + "_ticket" }

// checkTickets reports an unknown, misplaced or repeated ticket.
func checkTickets(tickets []Ticket, wecom bool) error {
	allowed := []Ticket{TicketJSAPI, TicketWxCard}
	if wecom {
		allowed = []Ticket{TicketJSAPI, TicketAgentConfig}
	}
	seen := map[Ticket]bool{}
	for _, t := range tickets {
		switch {
		case !slices.Contains(allowed, t):
			return fmt.Errorf("tickets: %.32q is not %q or %q", string(t), allowed[0], allowed[1])
		case seen[t]:
			return fmt.Errorf("tickets: %q is listed twice", t)
		}
		seen[t] = true
	}
	return nil
}

// checkTypedAppID checks an appid an operator typed (in the apps file or
// the environment): one WeChat could have issued. A Config built in code
// may name its apps with any key (kv.ValidateID).
func checkTypedAppID(appid string) error {
	if err := kv.ValidateID(appid); err != nil {
		return err
	}
	return kv.ValidateWeChatAppID(appid)
}

// checkIdentity reports what is wrong with how the app is named.
func (a App) checkIdentity() error {
	switch {
	case a.AppID != "" && a.CorpID != "":
		return errors.New("give appid or corpid, not both")
	case a.CorpID == "" && a.Agent != "":
		return errors.New("agent belongs to a WeCom app (corpid)")
	case a.platform() && (a.CorpID != "" || a.TokenAPI != "" || len(a.Tickets) > 0):
		return fmt.Errorf("platform %s: a component appid has no corpid, token_api or tickets", a.AppID)
	case a.platform():
		if err := kv.ValidateID(a.AppID); err != nil {
			return err
		}
		return a.Platform.check()
	case a.CorpID == "":
		return kv.ValidateID(a.AppID)
	case a.TokenAPI != "" && a.TokenAPI != TokenAPIClassic:
		return fmt.Errorf("token_api %q is for official accounts; WeCom has gettoken alone", a.TokenAPI)
	}
	if kv.ValidateID(a.CorpID) != nil {
		return fmt.Errorf("corpid %.64q is not a corp id (A-Z a-z 0-9 _)", a.CorpID)
	}
	if a.Agent == "" {
		return errors.New(`a WeCom app needs agent: its agentid, or a name for a secret of no agent (such as "contacts")`)
	}
	if kv.ValidateID(a.Agent) != nil {
		return fmt.Errorf("agent %.64q is not an agentid or a name (A-Z a-z 0-9 _)", a.Agent)
	}
	return kv.ValidateAppID(a.Key())
}

// TokenAPI names the WeChat API an app's access_token is fetched with.
type TokenAPI string

const (
	// TokenAPIClassic is GET /cgi-bin/token. Every fetch issues a new token
	// and ends the previous one after about 5 minutes.
	TokenAPIClassic TokenAPI = "token"
	// TokenAPIStable is POST /cgi-bin/stable_token. In normal mode a call
	// returns the current token until its last 5 minutes and never ends
	// anyone's token; the refresher calls it then, and forces a refresh
	// only for a token WeChat says is dead, within WeChat's 20 a day.
	TokenAPIStable TokenAPI = "stable"
)

// check reports whether api is one the refresher knows.
func (api TokenAPI) check() error {
	switch api {
	case "", TokenAPIClassic, TokenAPIStable:
		return nil
	}
	return fmt.Errorf("token_api %.32q is not %q or %q", string(api), TokenAPIClassic, TokenAPIStable)
}

// orClassic is api, with the empty default spelt out.
func (api TokenAPI) orClassic() TokenAPI {
	if api == "" {
		return TokenAPIClassic
	}
	return api
}

// appsFile is the YAML apps file:
//
//	apps:
//	  - appid: wx1234567890abcdef
//	    secret_env: WX_MAIN_SECRET   # or secret_file: /run/secrets/wx_main, or secret: ...
//	    token_api: stable            # or token, the default
//	    tickets: [jsapi, wx_card]    # JS-SDK tickets kept beside the token
//	  - corpid: ww1234567890abcdef     # a WeCom app secret: key "<corpid>-<agent>"
//	    agent: "1000002"
//	    secret_env: WECOM_APP_SECRET
//	    tickets: [jsapi, agent_config]
//	platforms:                         # third-party platforms (开放平台)
//	  - component_appid: wx0123456789abcdef
//	    secret_env: COMPONENT_SECRET           # each of the three: _env, _file or inline
//	    message_token_env: COMPONENT_MSG_TOKEN
//	    encoding_aes_key_file: /run/secrets/component_aes_key
type appsFile struct {
	Apps      []appEntry      `yaml:"apps"`
	Platforms []platformEntry `yaml:"platforms"`
}

type platformEntry struct {
	line               int    // where the entry starts in the file
	ComponentAppID     string `yaml:"component_appid"`
	Secret             string `yaml:"secret"`
	SecretEnv          string `yaml:"secret_env"`
	SecretFile         string `yaml:"secret_file"`
	MessageToken       string `yaml:"message_token"`
	MessageTokenEnv    string `yaml:"message_token_env"`
	MessageTokenFile   string `yaml:"message_token_file"`
	EncodingAESKey     string `yaml:"encoding_aes_key"`
	EncodingAESKeyEnv  string `yaml:"encoding_aes_key_env"`
	EncodingAESKeyFile string `yaml:"encoding_aes_key_file"`
}

type appEntry struct {
	line       int      // where the entry starts in the file
	AppID      string   `yaml:"appid"`
	CorpID     string   `yaml:"corpid"`
	Agent      string   `yaml:"agent"`
	Secret     string   `yaml:"secret"`
	SecretEnv  string   `yaml:"secret_env"`
	SecretFile string   `yaml:"secret_file"`
	TokenAPI   string   `yaml:"token_api"`
	Tickets    []string `yaml:"tickets"`
}

// UnmarshalYAML decodes the entry and notes its line, for its errors.
func (e *appEntry) UnmarshalYAML(n *yaml.Node) error {
	type plain appEntry
	if err := n.Decode((*plain)(e)); err != nil {
		return err
	}
	e.line = n.Line
	return nil
}

// UnmarshalYAML decodes the entry and notes its line, for its errors.
func (e *platformEntry) UnmarshalYAML(n *yaml.Node) error {
	type plain platformEntry
	if err := n.Decode((*plain)(e)); err != nil {
		return err
	}
	e.line = n.Line
	return nil
}

// maxAppsFileSize bounds the apps file; 10,000 apps fit in about 1 MB.
const maxAppsFileSize = 16 << 20

// LoadAppsFile reads the apps file at path. Secrets named by secret_env are
// looked up with getenv; secret_file paths are read now, so a missing secret
// fails at start and not at the first refresh.
func LoadAppsFile(path string, getenv func(string) string) ([]App, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("publisher: apps file: %w: give --apps (WXTOKEN_APPS) the path of the apps file, "+
			"YAML as in the README's Configuration", err)
	}
	if err != nil {
		return nil, fmt.Errorf("publisher: apps file: %w", err)
	}
	if len(data) > maxAppsFileSize {
		return nil, fmt.Errorf("publisher: apps file %s is larger than %d bytes", path, maxAppsFileSize)
	}
	apps, err := parseApps(path, data, getenv)
	if err != nil {
		return nil, fmt.Errorf("publisher: apps file %w", err)
	}
	return apps, nil
}

// ParseApps parses the content of an apps file. Unknown keys are errors, so
// that a misspelt "secret_evn" fails loudly instead of leaving an app
// without its secret. An error names the line it is about.
func ParseApps(data []byte, getenv func(string) string) ([]App, error) {
	return parseApps("", data, getenv)
}

// parseApps parses the apps file named file (or "" for text of no file).
// Every error starts with the file's name, as file:line where it has a
// line.
func parseApps(file string, data []byte, getenv func(string) string) ([]App, error) {
	var f appsFile
	if err := yamlfile.Decode(file, data, &f); err != nil {
		return nil, err
	}
	if len(f.Apps) == 0 && len(f.Platforms) == 0 {
		return nil, yamlfile.At(file, 0, errors.New(`no apps: the file needs a list under "apps:" or "platforms:"`))
	}
	apps := make([]App, 0, len(f.Apps)+len(f.Platforms))
	for i, e := range f.Apps {
		app, err := e.resolve(getenv)
		if err != nil {
			return nil, yamlfile.At(file, e.line, fmt.Errorf("apps[%d]: %w", i, err))
		}
		apps = append(apps, app)
	}
	for i, e := range f.Platforms {
		app, err := e.resolve(getenv)
		if err != nil {
			return nil, yamlfile.At(file, e.line, fmt.Errorf("platforms[%d]: %w", i, err))
		}
		apps = append(apps, app)
	}
	if err := checkUnique(apps); err != nil {
		return nil, yamlfile.At(file, 0, err)
	}
	return apps, nil
}

func (e appEntry) resolve(getenv func(string) string) (App, error) {
	tickets := make([]Ticket, len(e.Tickets))
	for i, t := range e.Tickets {
		tickets[i] = Ticket(t)
	}
	app := App{AppID: e.AppID, CorpID: e.CorpID, Agent: e.Agent, TokenAPI: TokenAPI(e.TokenAPI), Tickets: tickets}
	if err := app.checkIdentity(); err != nil {
		return App{}, err
	}
	if !app.wecom() {
		if err := checkTypedAppID(app.AppID); err != nil {
			return App{}, err
		}
	}
	name := "app " + app.Key()
	if app.wecom() {
		name = "WeCom app " + app.Key()
	}
	if err := app.TokenAPI.check(); err != nil {
		return App{}, fmt.Errorf("%s: %w", name, err)
	}
	if err := checkTickets(tickets, app.wecom()); err != nil {
		return App{}, fmt.Errorf("%s: %w", name, err)
	}
	secret, err := resolveSecret("secret", e.Secret, e.SecretEnv, e.SecretFile, getenv)
	if err != nil {
		return App{}, fmt.Errorf("%s: %w", name, err)
	}
	app.Secret, app.secretFrom = secret, secretSource{file: e.SecretFile, env: e.SecretEnv, inline: e.Secret != ""}
	if !app.wecom() {
		app.TokenAPI = app.TokenAPI.orClassic()
	}
	return app, nil
}

// resolveSecret returns the secret field given inline, by environment
// variable (field_env) or by file (field_file): exactly one of them.
func resolveSecret(field, inline, envName, file string, getenv func(string) string) (Secret, error) {
	given := 0
	for _, s := range []string{inline, envName, file} {
		if s != "" {
			given++
		}
	}
	if given != 1 {
		return Secret{}, fmt.Errorf("give exactly one of %[1]s_env, %[1]s_file and %[1]s", field)
	}
	switch {
	case envName != "":
		secret := getenv(envName)
		if secret == "" {
			return Secret{}, fmt.Errorf("%s: environment variable %s is empty or not set", field, envName)
		}
		return NewSecret(secret), nil
	case file != "":
		secret, err := readSecretFile(file)
		if err != nil {
			return Secret{}, fmt.Errorf("%s: %w", field, err)
		}
		return NewSecret(secret), nil
	}
	return NewSecret(inline), nil
}

func (e platformEntry) resolve(getenv func(string) string) (App, error) {
	if err := checkTypedAppID(e.ComponentAppID); err != nil {
		return App{}, fmt.Errorf("component_appid: %w", err)
	}
	name := "platform " + e.ComponentAppID
	secret, err := resolveSecret("secret", e.Secret, e.SecretEnv, e.SecretFile, getenv)
	if err != nil {
		return App{}, fmt.Errorf("%s: %w", name, err)
	}
	token, err := resolveSecret("message_token", e.MessageToken, e.MessageTokenEnv, e.MessageTokenFile, getenv)
	if err != nil {
		return App{}, fmt.Errorf("%s: %w", name, err)
	}
	key, err := resolveSecret("encoding_aes_key", e.EncodingAESKey, e.EncodingAESKeyEnv, e.EncodingAESKeyFile, getenv)
	if err != nil {
		return App{}, fmt.Errorf("%s: %w", name, err)
	}
	app := App{AppID: e.ComponentAppID, Secret: secret, Platform: &Platform{MessageToken: token, EncodingAESKey: key},
		secretFrom: secretSource{file: e.SecretFile, env: e.SecretEnv, inline: e.Secret != ""}}
	if err := app.checkIdentity(); err != nil {
		return App{}, err
	}
	return app, nil
}

// AppFromEnv returns the single app that WECHAT_APPID with WECHAT_APPSECRET
// or WECHAT_APPSECRET_FILE, and optionally WECHAT_TOKEN_API (token or
// stable), describe; ok is false when WECHAT_APPID is unset.
func AppFromEnv(getenv func(string) string) (app App, ok bool, err error) {
	appid := getenv("WECHAT_APPID")
	if appid == "" {
		return App{}, false, nil
	}
	if err := checkTypedAppID(appid); err != nil {
		return App{}, true, fmt.Errorf("publisher: WECHAT_APPID: %w", err)
	}
	api := TokenAPI(getenv("WECHAT_TOKEN_API"))
	if err := api.check(); err != nil {
		return App{}, true, fmt.Errorf("publisher: WECHAT_TOKEN_API: %w", err)
	}
	secret, file := getenv("WECHAT_APPSECRET"), getenv("WECHAT_APPSECRET_FILE")
	from := secretSource{env: "WECHAT_APPSECRET"}
	switch {
	case secret != "" && file != "":
		return App{}, true, errors.New("publisher: set WECHAT_APPSECRET or WECHAT_APPSECRET_FILE, not both")
	case file != "":
		s, err := readSecretFile(file)
		if err != nil {
			return App{}, true, fmt.Errorf("publisher: WECHAT_APPSECRET_FILE: %w", err)
		}
		secret, from = s, secretSource{file: file}
	case secret == "":
		return App{}, true, fmt.Errorf("publisher: WECHAT_APPID is %s but neither WECHAT_APPSECRET nor WECHAT_APPSECRET_FILE is set", appid)
	}
	return App{AppID: appid, Secret: NewSecret(secret), TokenAPI: api.orClassic(), secretFrom: from}, true, nil
}

// readSecretFile reads a secret file (a Docker or systemd secret, say),
// without the trailing newline editors add.
func readSecretFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("secret file: %w", err)
	}
	secret := strings.TrimSpace(string(data))
	if secret == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return secret, nil
}

func checkUnique(apps []App) error {
	seen := make(map[string]bool, len(apps))
	for _, a := range apps {
		if seen[a.Key()] {
			return fmt.Errorf("app %s is listed twice", a.Key())
		}
		seen[a.Key()] = true
	}
	return nil
}
