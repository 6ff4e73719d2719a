package upstream

import "errors"

// SecretFix is what an operator does about an answer that says the secret
// of the credential key is no good (40125: invalid; 40243: frozen): the
// console's step, then the command that gives every replica the new secret
// without a restart. It is "" for any other error.
func SecretFix(err error, key string) string {
	var e *Error
	if !errors.As(err, &e) {
		return ""
	}
	switch e.ErrCode {
	case 40125:
		return "reset it in WeChat's console, then give the new one to wxtoken with `wxtoken secret set " + key + "`"
	case 40243:
		return "unfreeze it in WeChat's console (it takes about 10 minutes), or reset it there and give the new one with `wxtoken secret set " + key + "`"
	}
	return ""
}
