.PHONY: test bench demo build fuzz

build:
	go build -o surge ./cmd/surge

demo:
	go run ./cmd/surge demo

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh

fuzz:
	go test -run '^$$' -fuzz FuzzDecodeOrder -fuzztime 30s ./internal/api
	go test -run '^$$' -fuzz FuzzParseToken -fuzztime 30s ./internal/member
