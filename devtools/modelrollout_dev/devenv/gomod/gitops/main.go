// Command gitops reads a Kubernetes object the way GitOps tools read it, with their own libraries:
//
//	gitops kstatus [OBJECT]                                  kstatus (sigs.k8s.io/cli-utils), as Flux reads health
//	gitops argocd-health -script FILE [OBJECT]               an Argo CD Lua health script, run in gopher-lua
//	gitops argocd-action -script FILE [-merge-patch] [OBJECT] an Argo CD resource action script
//	gitops argocd-discovery -script FILE [OBJECT]            an Argo CD action discovery script
//
// OBJECT is a JSON file, or standard input when it is absent or "-". Every answer is one JSON document on
// standard output; a failure exits 1 with the reason on standard error.
//
// The Lua side follows how Argo CD runs scripts from argocd-cm (util/lua in argoproj/argo-cd): a Lua state
// without the standard libraries, then only package, base, table and an os library cut down to time and date;
// the object as the global `obj` (JSON null is an absent key, arrays are 1-based tables), an empty global
// `actionParams`, a one-second deadline; the returned table is turned back into JSON (a table with no keys
// becomes an empty array, which Argo CD then mends where the object had an empty map).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"time"

	jsonpatch "github.com/evanphx/json-patch"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// The health statuses Argo CD accepts from a script; anything else reads as Unknown.
var argoHealth = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

const invalidHealth = "Lua returned an invalid health status"

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: gitops kstatus|argocd-health|argocd-action|argocd-discovery [flags] [OBJECT]"))
	}
	command, args := os.Args[1], os.Args[2:]
	flags := flag.NewFlagSet(command, flag.ExitOnError)
	script := flags.String("script", "", "the Lua script (argocd-*)")
	mergePatch := flags.Bool("merge-patch", false, "argocd-action: print the JSON merge patch from the object "+
		"to the script's result (what Argo CD sends to the API server) instead of the result")
	if err := flags.Parse(args); err != nil {
		fail(err)
	}
	raw, obj, err := readObject(flags.Arg(0))
	if err != nil {
		fail(err)
	}
	var out any
	switch command {
	case "kstatus":
		out, err = computeKstatus(obj)
	case "argocd-health":
		out, err = withScript(*script, func(source string) (any, error) { return runHealth(source, obj) })
	case "argocd-action":
		out, err = withScript(*script, func(source string) (any, error) {
			return runAction(source, raw, obj, *mergePatch)
		})
	case "argocd-discovery":
		out, err = withScript(*script, func(source string) (any, error) { return runDiscovery(source, obj) })
	default:
		err = fmt.Errorf("unknown command %q", command)
	}
	if err != nil {
		fail(err)
	}
	encoded, err := json.Marshal(out)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(encoded))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gitops:", err)
	os.Exit(1)
}

func readObject(path string) ([]byte, map[string]any, error) {
	var raw []byte
	var err error
	if path == "" || path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, nil, err
	}
	// Decoded as the Kubernetes libraries decode it (whole numbers are int64), as kstatus and Argo CD get it.
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(raw); err != nil {
		return nil, nil, fmt.Errorf("the input is not a Kubernetes object: %w", err)
	}
	return raw, obj.Object, nil
}

func withScript(path string, run func(string) (any, error)) (any, error) {
	if path == "" {
		return nil, errors.New("-script is required")
	}
	source, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return run(string(source))
}

type kstatusResult struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func computeKstatus(obj map[string]any) (any, error) {
	result, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		return nil, err
	}
	return kstatusResult{Status: result.Status.String(), Message: result.Message}, nil
}

// runScript runs `source` with `obj` as Argo CD would and returns what the script returned (nil for nothing).
func runScript(source string, obj map[string]any) (lua.LValue, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, lua.OpenOs},
	} {
		if err := state.CallByParam(lua.P{Fn: state.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	// Of the os library, scripts get only the clock: no exit, execute, getenv, remove, rename or tmpname.
	if osTable, ok := state.GetGlobal(lua.OsLibName).(*lua.LTable); ok {
		var unsafe []lua.LValue
		osTable.ForEach(func(key, _ lua.LValue) {
			if name := key.String(); name != "time" && name != "date" {
				unsafe = append(unsafe, key)
			}
		})
		for _, key := range unsafe {
			osTable.RawSet(key, lua.LNil)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	state.SetContext(ctx)
	state.SetGlobal("actionParams", state.NewTable())
	state.SetGlobal("obj", toLua(state, obj))
	chunk, err := state.LoadString(source)
	if err != nil {
		return nil, err
	}
	state.Push(chunk)
	if err := state.PCall(0, lua.MultRet, nil); err != nil {
		// The error alone, as Argo CD shows it to users: the stack trace of the chunk says nothing more.
		var apiErr *lua.ApiError
		if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
			apiErr.StackTrace = ""
		}
		return nil, err
	}
	if state.GetTop() == 0 {
		return lua.LNil, nil
	}
	return state.Get(-1), nil
}

func toLua(state *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case int64:
		return lua.LNumber(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		table := state.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case map[string]any:
		table := state.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	}
	return lua.LNil
}

// fromLua turns a returned Lua value into JSON data: a table keyed 1..n is an array, a table keyed by strings
// an object, a table with no keys an empty array; other keys, sparse arrays and functions are errors.
func fromLua(value lua.LValue, seen map[*lua.LTable]bool) (any, error) {
	switch v := value.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		return bool(v), nil
	case lua.LNumber:
		number := float64(v)
		if math.IsNaN(number) || math.IsInf(number, 0) {
			return nil, fmt.Errorf("the number %v has no JSON form", number)
		}
		return number, nil
	case lua.LString:
		return string(v), nil
	case *lua.LTable:
		if seen[v] {
			return nil, errors.New("a table contains itself")
		}
		seen[v] = true
		defer delete(seen, v)
		first, _ := v.Next(lua.LNil)
		switch first.(type) {
		case *lua.LNilType:
			return []any{}, nil
		case lua.LNumber:
			items := []any{}
			for index := 1; ; index++ {
				item := v.RawGetInt(index)
				if item == lua.LNil {
					break
				}
				converted, err := fromLua(item, seen)
				if err != nil {
					return nil, err
				}
				items = append(items, converted)
			}
			count := 0
			v.ForEach(func(_, _ lua.LValue) { count++ })
			if count != len(items) {
				return nil, errors.New("a table mixes array items with other keys, or has holes")
			}
			return items, nil
		case lua.LString:
			object := map[string]any{}
			var err error
			v.ForEach(func(key, item lua.LValue) {
				if err != nil {
					return
				}
				name, ok := key.(lua.LString)
				if !ok {
					err = fmt.Errorf("a table mixes string keys with a %s key", key.Type())
					return
				}
				object[string(name)], err = fromLua(item, seen)
			})
			if err != nil {
				return nil, err
			}
			return object, nil
		default:
			return nil, fmt.Errorf("a table key of type %s has no JSON form", first.Type())
		}
	}
	return nil, fmt.Errorf("a %s value has no JSON form", value.Type())
}

func returnedTable(returned lua.LValue) (any, error) {
	if _, ok := returned.(*lua.LTable); !ok {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", returned.Type())
	}
	return fromLua(returned, map[*lua.LTable]bool{})
}

// runForTable runs a script that must return a table (actions, discovery) and converts it.
func runForTable(source string, obj map[string]any) (any, error) {
	returned, err := runScript(source, obj)
	if err != nil {
		return nil, err
	}
	return returnedTable(returned)
}

type healthResult struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func runHealth(source string, obj map[string]any) (any, error) {
	returned, err := runScript(source, obj)
	if err != nil {
		return nil, err
	}
	if returned == lua.LNil {
		return healthResult{}, nil
	}
	converted, err := returnedTable(returned)
	if err != nil {
		return nil, err
	}
	fields, ok := converted.(map[string]any)
	if !ok { // no keys at all: an empty health, as Argo CD reads it
		return healthResult{}, nil
	}
	encoded, _ := json.Marshal(fields)
	var result healthResult
	if err := json.Unmarshal(encoded, &result); err != nil {
		return nil, err
	}
	if !argoHealth[result.Status] {
		return healthResult{Status: "Unknown", Message: invalidHealth}, nil
	}
	return result, nil
}

func runAction(source string, raw []byte, obj map[string]any, mergePatch bool) (any, error) {
	converted, err := runForTable(source, obj)
	if err != nil {
		return nil, err
	}
	updated, ok := converted.(map[string]any)
	if !ok {
		// A list is Argo CD's newer form (impacted resources with operations); these scripts return the object.
		return nil, errors.New("the action returned a list, not the modified object")
	}
	updated = mendEmptyMaps(updated, obj)
	if !mergePatch {
		return updated, nil
	}
	encoded, err := json.Marshal(updated)
	if err != nil {
		return nil, err
	}
	patch, err := jsonpatch.CreateMergePatch(raw, encoded)
	if err != nil {
		return nil, err
	}
	return json.RawMessage(patch), nil
}

// mendEmptyMaps puts back an empty map where the original object had one and the Lua round trip made it an
// empty array (Lua cannot tell the two apart), recursing through maps and the arrays both sides share.
func mendEmptyMaps(updated, original map[string]any) map[string]any {
	for key, before := range original {
		after, ok := updated[key]
		if !ok {
			continue
		}
		switch now := after.(type) {
		case map[string]any:
			if was, ok := before.(map[string]any); ok {
				updated[key] = mendEmptyMaps(now, was)
			}
		case []any:
			switch was := before.(type) {
			case map[string]any:
				if len(now) == 0 {
					updated[key] = map[string]any{}
				}
			case []any:
				updated[key] = mendEmptyMapsIn(now, was)
			}
		}
	}
	return updated
}

func mendEmptyMapsIn(updated, original []any) []any {
	for index := range updated {
		if index >= len(original) {
			break
		}
		switch now := updated[index].(type) {
		case map[string]any:
			if was, ok := original[index].(map[string]any); ok {
				updated[index] = mendEmptyMaps(now, was)
			}
		case []any:
			if was, ok := original[index].([]any); ok {
				updated[index] = mendEmptyMapsIn(now, was)
			}
		}
	}
	return updated
}

type discoveredAction struct {
	Name     string `json:"name"`
	Disabled bool   `json:"disabled"`
}

func runDiscovery(source string, obj map[string]any) (any, error) {
	converted, err := runForTable(source, obj)
	if err != nil {
		return nil, err
	}
	actions := []discoveredAction{}
	byName, ok := converted.(map[string]any)
	if !ok { // an empty table: no actions
		return actions, nil
	}
	for name, settings := range byName {
		action := discoveredAction{Name: name}
		// Actions are enabled unless the script says `disabled = true`.
		if fields, ok := settings.(map[string]any); ok {
			if disabled, ok := fields["disabled"].(bool); ok {
				action.Disabled = disabled
			}
		}
		actions = append(actions, action)
	}
	sort.Slice(actions, func(i, j int) bool { return actions[i].Name < actions[j].Name })
	return actions, nil
}
