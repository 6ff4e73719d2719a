package wechaterr

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// MaxErrorBody is the most of a response Peek reads to look for an errcode.
// WeChat's error answers are a few hundred bytes; a longer body is not one
// and is passed on untouched.
const MaxErrorBody = 16 << 10

// Peek returns the errcode of a WeChat JSON answer (0 when there is none)
// and the response with its body intact for the caller. Only a short JSON
// or text body is read; a long one, or a file, is left unread.
func Peek(resp *http.Response) (int, *http.Response, error) {
	answer, resp, err := PeekAnswer(resp)
	return answer.ErrCode, resp, err
}

// Answer is a WeChat answer's errcode and errmsg.
type Answer struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
}

// PeekAnswer is Peek, with the answer's errmsg too.
func PeekAnswer(resp *http.Response) (Answer, *http.Response, error) {
	ct := resp.Header.Get("Content-Type")
	if resp.ContentLength > MaxErrorBody || !(strings.Contains(ct, "json") || strings.HasPrefix(ct, "text/plain") || ct == "") {
		return Answer{}, resp, nil
	}
	head, err := io.ReadAll(io.LimitReader(resp.Body, MaxErrorBody+1))
	if err != nil {
		resp.Body.Close()
		return Answer{}, nil, err
	}
	if len(head) > MaxErrorBody {
		// Not an error answer: give the caller the whole body back.
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
		return Answer{}, resp, nil
	}
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(head))
	var answer Answer
	if json.Unmarshal(head, &answer) != nil {
		return Answer{}, resp, nil
	}
	return answer, resp, nil
}
