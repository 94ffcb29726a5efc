# claude-jail: every user's `claude` goes through the egress jail (the shim finds the real one).
case ":${PATH}:" in
  *:@SHIMDIR@:*) ;;
  *) PATH="@SHIMDIR@:${PATH}"; export PATH ;;
esac
