package main

import "fmt"

func cmdLearn(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}

func cmdClassify(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}

func cmdEval(args []string) int {
	fmt.Println("not implemented yet")
	return 2
}
