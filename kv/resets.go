package kv

// The rescue of a spent quota counts its resets in the ledger's
// MonthCalls under these names (README, "A spent quota, rescued"):
// quota/clear's from one budget, and the account's own resets, which
// share its 10 a month with WeChat's console, from another. A platform's
// resets (component/clear_quota and its v2) are the platform account's.
const ResetPath = "quota_clear"

var accountResets = []string{"clear_quota", "clear_quota_v2", "component_clear_quota", "component_clear_quota_v2"}

// PathResets is how many single-path resets (quota/clear) the ledger
// counts in its month.
func (l Ledger) PathResets() int { return l.MonthCalls[ResetPath] }

// AccountResets is how many of the account's own resets the ledger counts
// in its month, by whichever API they were made.
func (l Ledger) AccountResets() int {
	n := 0
	for _, api := range accountResets {
		n += l.MonthCalls[api]
	}
	return n
}
