// Package wechaterr holds what wxtoken knows of WeChat's error codes that
// more than one of its packages needs.
package wechaterr

// TokenRejected reports whether a WeChat errcode says that an API call's
// access_token is not, or no longer, valid: 40001 (invalid credential),
// 40014 (invalid access_token) or 42001 (access_token expired). These are
// the answers after which a service asks for a refresh.
func TokenRejected(errcode int) bool {
	return errcode == 40001 || errcode == 40014 || errcode == 42001
}
