"""The five-month course: music-therapy sessions and parent counselling."""
